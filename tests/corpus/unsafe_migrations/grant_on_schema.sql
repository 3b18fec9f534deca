-- expect: refused: GRANT ON SCHEMA
-- execution: refused
-- reason: line 4: GRANT/REVOKE on a schema
GRANT CREATE ON SCHEMA public TO PUBLIC;
