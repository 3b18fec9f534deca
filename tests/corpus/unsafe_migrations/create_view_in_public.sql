-- expect: refused: CREATE OR REPLACE VIEW in public
-- execution: refused
-- reason: line 4: acts on public.report
CREATE OR REPLACE VIEW public.report AS SELECT 1 AS one;
