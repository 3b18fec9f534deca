-- expect: refused: drop a role
-- execution: refused
-- reason: line 4: DROP ROLE:
DROP ROLE IF EXISTS app;
