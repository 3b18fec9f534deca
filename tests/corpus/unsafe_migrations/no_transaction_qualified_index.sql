-- expect: refused: a no-transaction file indexing a public table
-- execution: refused
-- reason: line 5: acts on public.orders
-- pgtenancy: no-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_x ON public.orders (id);
