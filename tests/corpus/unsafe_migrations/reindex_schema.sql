-- expect: refused: REINDEX SCHEMA
-- execution: refused
-- reason: line 4: REINDEX SCHEMA
REINDEX SCHEMA public;
