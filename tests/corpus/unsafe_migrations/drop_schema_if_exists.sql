-- expect: refused: pg_dump --clean drop of an extension's schema
-- execution: refused
-- reason: line 4: DROP SCHEMA: not a tenant object
DROP SCHEMA IF EXISTS partman;
