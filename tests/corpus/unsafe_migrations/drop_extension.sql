-- expect: refused: drop an extension for the whole database
-- execution: refused
-- reason: line 4: DropStmt of extension
DROP EXTENSION IF EXISTS pg_trgm;
