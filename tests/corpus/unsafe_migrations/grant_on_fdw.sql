-- expect: refused: GRANT ON FOREIGN DATA WRAPPER
-- execution: refused
-- reason: line 4: GRANT/REVOKE on a fdw
GRANT USAGE ON FOREIGN DATA WRAPPER postgres_fdw TO app;
