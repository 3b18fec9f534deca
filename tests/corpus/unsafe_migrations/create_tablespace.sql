-- expect: refused: CREATE TABLESPACE
-- execution: refused
-- reason: line 4: CreateTableSpaceStmt
CREATE TABLESPACE fast LOCATION '/tmp';
