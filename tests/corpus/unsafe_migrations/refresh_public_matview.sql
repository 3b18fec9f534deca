-- expect: refused: REFRESH MATERIALIZED VIEW qualified
-- execution: refused
-- reason: line 4: acts on public.totals
REFRESH MATERIALIZED VIEW public.totals;
