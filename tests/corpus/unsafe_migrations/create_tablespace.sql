-- expect: refused: CREATE TABLESPACE
-- execution: refused
-- reason: line 4: CREATE TABLESPACE:
CREATE TABLESPACE fast LOCATION '/tmp';
