-- expect: refused: GRANT EXECUTE on a shared function
-- execution: refused
-- reason: line 4: acts on public.f
GRANT EXECUTE ON FUNCTION public.f() TO PUBLIC;
