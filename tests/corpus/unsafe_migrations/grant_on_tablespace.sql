-- expect: refused: GRANT ON TABLESPACE
-- execution: refused
-- reason: line 4: GRANT/REVOKE on a tablespace
GRANT CREATE ON TABLESPACE pg_default TO app;
