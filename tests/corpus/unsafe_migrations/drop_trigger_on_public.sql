-- expect: refused: DROP TRIGGER on a shared table
-- execution: refused
-- reason: line 4: acts on public.orders
DROP TRIGGER IF EXISTS audit ON public.orders;
