-- expect: refused: COMMENT ON a qualified table
-- execution: refused
-- reason: line 4: acts on public.orders
COMMENT ON TABLE public.orders IS 'mine now';
