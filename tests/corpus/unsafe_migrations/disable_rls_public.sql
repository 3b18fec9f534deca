-- expect: refused: ALTER TABLE public.orders DISABLE ROW LEVEL SECURITY
-- execution: refused
-- reason: line 4: acts on public.orders
ALTER TABLE public.orders DISABLE ROW LEVEL SECURITY;
