-- expect: refused: RESET search_path
-- execution: refused
-- reason: line 4: SET/RESET search_path
RESET search_path;
