-- expect: refused: GRANT ON DATABASE
-- execution: refused
-- reason: line 4: GRANT/REVOKE on a database
GRANT CREATE ON DATABASE postgres TO app;
