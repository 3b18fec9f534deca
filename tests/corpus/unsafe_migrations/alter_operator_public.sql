-- expect: refused: ALTER OPERATOR in public
-- execution: refused
-- reason: line 4: acts on public.===
ALTER OPERATOR public.=== (integer, integer) SET (RESTRICT = eqsel);
