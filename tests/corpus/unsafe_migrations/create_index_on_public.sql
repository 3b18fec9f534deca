-- expect: refused: CREATE INDEX on a qualified table
-- execution: refused
-- reason: line 4: acts on public.orders
CREATE INDEX orders_x ON public.orders (id);
