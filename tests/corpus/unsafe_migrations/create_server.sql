-- expect: refused: CREATE SERVER
-- execution: refused
-- reason: line 4: foreign servers
CREATE SERVER remote FOREIGN DATA WRAPPER postgres_fdw;
