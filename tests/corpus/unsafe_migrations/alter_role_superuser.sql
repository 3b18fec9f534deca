-- expect: refused: ALTER ROLE ... SUPERUSER
-- execution: refused
-- reason: line 4: ALTER ROLE:
ALTER ROLE app SUPERUSER;
