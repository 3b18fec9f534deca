-- expect: refused: create a role
-- execution: refused
-- reason: line 4: CREATE ROLE:
CREATE ROLE intruder LOGIN SUPERUSER;
