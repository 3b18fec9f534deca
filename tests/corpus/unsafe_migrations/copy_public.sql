-- expect: refused: COPY into a shared table
-- execution: refused
-- reason: line 4: acts on public.plans
COPY public.plans FROM STDIN;
