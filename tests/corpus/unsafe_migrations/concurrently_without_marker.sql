-- expect: refused: CREATE INDEX CONCURRENTLY in a transaction
-- execution: refused
-- reason: line 5: cannot run inside a transaction
CREATE TABLE t (id int);
CREATE INDEX CONCURRENTLY t_id ON t (id);
