-- expect: refused: rename a trigger of a shared table
-- execution: refused
-- reason: line 4: acts on public.orders
ALTER TRIGGER audit ON public.orders RENAME TO off;
