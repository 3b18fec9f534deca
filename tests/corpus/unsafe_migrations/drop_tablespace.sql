-- expect: refused: DROP TABLESPACE
-- execution: refused
-- reason: line 4: DropTableSpaceStmt
DROP TABLESPACE IF EXISTS fast;
