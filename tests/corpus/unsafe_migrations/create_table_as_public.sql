-- expect: refused: CREATE TABLE public.x AS
-- execution: refused
-- reason: line 4: acts on public.loot
CREATE TABLE public.loot AS SELECT * FROM tenancy.tenants;
