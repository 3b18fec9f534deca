-- expect: refused: drop the application's public table
-- execution: refused
-- reason: line 4: acts on public.invoice
DROP TABLE IF EXISTS public.invoice;
