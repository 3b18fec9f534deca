-- expect: refused: DROP POLICY on a shared table
-- execution: refused
-- reason: line 4: acts on public.orders
DROP POLICY IF EXISTS tenant_isolation ON public.orders;
