-- expect: refused: GRANT ON ALL TABLES IN SCHEMA
-- execution: refused
-- reason: line 4: ALL ... IN SCHEMA
GRANT SELECT ON ALL TABLES IN SCHEMA tenancy TO PUBLIC;
