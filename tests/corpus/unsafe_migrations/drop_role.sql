-- expect: refused: drop a role
-- execution: refused
-- reason: line 4: DropRoleStmt
DROP ROLE IF EXISTS app;
