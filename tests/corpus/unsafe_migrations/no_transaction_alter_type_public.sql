-- expect: refused: ALTER TYPE public.x ADD VALUE in a no-transaction file
-- execution: refused
-- reason: line 5: acts on public.mood
-- pgtenancy: no-transaction
ALTER TYPE public.mood ADD VALUE 'meh';
