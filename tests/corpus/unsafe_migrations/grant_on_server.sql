-- expect: refused: GRANT ON FOREIGN SERVER
-- execution: refused
-- reason: line 4: GRANT/REVOKE on a foreign_server
GRANT USAGE ON FOREIGN SERVER remote TO app;
