-- expect: allowed: ANALYZE inside a transaction
-- execution: allowed
-- passes the gate
CREATE TABLE t (id int);
INSERT INTO t SELECT generate_series(1, 10);
ANALYZE t;
