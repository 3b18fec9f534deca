-- expect: refused: update an extension
-- execution: refused
-- reason: line 4: extensions are installed once
ALTER EXTENSION pg_trgm UPDATE;
