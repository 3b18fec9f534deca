-- expect: refused: grant role membership
-- execution: refused
-- reason: line 4: role membership
GRANT pg_read_server_files TO app;
