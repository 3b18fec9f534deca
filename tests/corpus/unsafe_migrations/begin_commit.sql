-- expect: refused: transaction control
-- execution: refused
-- reason: line 5: transaction control
CREATE TABLE t (id int);
BEGIN;
CREATE TABLE u (id int);
COMMIT;
