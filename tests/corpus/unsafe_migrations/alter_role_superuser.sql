-- expect: refused: ALTER ROLE ... SUPERUSER
-- execution: refused
-- reason: line 4: AlterRoleStmt
ALTER ROLE app SUPERUSER;
