-- expect: refused: pg_dump --clean drop of an extension's schema
-- execution: refused
-- reason: line 4: DropStmt of schema
DROP SCHEMA IF EXISTS partman;
