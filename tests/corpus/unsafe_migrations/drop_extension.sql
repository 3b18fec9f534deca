-- expect: refused: drop an extension for the whole database
-- execution: refused
-- reason: line 4: DROP EXTENSION: not a tenant object
DROP EXTENSION IF EXISTS pg_trgm;
