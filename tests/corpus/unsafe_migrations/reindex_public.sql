-- expect: refused: REINDEX a qualified table
-- execution: refused
-- reason: line 4: acts on public.orders
REINDEX TABLE public.orders;
