-- expect: refused: create a schema
-- execution: refused
-- reason: line 4: CREATE SCHEMA
CREATE SCHEMA reports;
