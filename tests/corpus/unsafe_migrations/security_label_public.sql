-- expect: refused: SECURITY LABEL on a qualified table
-- execution: refused
-- reason: line 4: acts on public.orders
SECURITY LABEL ON TABLE public.orders IS 'x';
