-- expect: refused: install an extension into the first tenant's schema
-- execution: refused
-- reason: line 4: extensions are installed once
CREATE EXTENSION IF NOT EXISTS ltree;
