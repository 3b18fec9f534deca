-- expect: refused: create a role
-- execution: refused
-- reason: line 4: CreateRoleStmt
CREATE ROLE intruder LOGIN SUPERUSER;
