-- expect: allowed: seed a tenant table from a shared one
-- execution: allowed
-- passes the gate
CREATE TABLE plan_copy (id bigint, name text);
INSERT INTO plan_copy SELECT id, name FROM public.plans;
