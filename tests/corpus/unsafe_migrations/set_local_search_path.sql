-- expect: refused: SET LOCAL search_path
-- execution: refused
-- reason: line 4: SET/RESET search_path
SET LOCAL search_path = public, pg_catalog;
