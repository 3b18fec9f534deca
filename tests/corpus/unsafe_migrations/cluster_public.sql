-- expect: refused: CLUSTER a qualified table
-- execution: refused
-- reason: line 4: acts on public.orders
CLUSTER public.orders USING orders_pkey;
