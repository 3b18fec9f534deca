-- expect: refused: CREATE SEQUENCE in public
-- execution: refused
-- reason: line 4: acts on public.s
CREATE SEQUENCE public.s;
