-- expect: refused: open up the policy of a shared table
-- execution: refused
-- reason: line 4: acts on public.orders
ALTER POLICY tenant_isolation ON public.orders USING (true);
