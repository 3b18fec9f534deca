-- expect: refused: make a shared function SECURITY DEFINER
-- execution: refused
-- reason: line 4: acts on public.f
ALTER FUNCTION public.f() SECURITY DEFINER;
