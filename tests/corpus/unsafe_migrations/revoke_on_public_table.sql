-- expect: refused: REVOKE on a shared table
-- execution: refused
-- reason: line 4: acts on public.orders
REVOKE ALL ON public.orders FROM app;
