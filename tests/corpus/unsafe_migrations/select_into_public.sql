-- expect: refused: SELECT INTO a new public table
-- execution: refused
-- reason: line 4: acts on public.loot
SELECT * INTO public.loot FROM tenancy.tenants;
