-- expect: refused: ALTER TABLE ... OWNER TO
-- execution: refused
-- reason: line 5: OWNER TO
CREATE TABLE t (id int);
ALTER TABLE t OWNER TO app;
