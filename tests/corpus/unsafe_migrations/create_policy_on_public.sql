-- expect: refused: CREATE POLICY on a qualified table
-- execution: refused
-- reason: line 4: acts on public.orders
CREATE POLICY open ON public.orders USING (true);
