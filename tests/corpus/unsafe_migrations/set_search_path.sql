-- expect: refused: SET search_path
-- execution: refused
-- reason: line 5: SET/RESET search_path
CREATE TABLE t (id int);
SET search_path = public;
