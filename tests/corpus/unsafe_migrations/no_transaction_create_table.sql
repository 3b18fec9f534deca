-- expect: refused: a no-transaction file with a CREATE TABLE
-- execution: refused
-- reason: line 5: no-transaction' file
-- pgtenancy: no-transaction
CREATE TABLE t (id int);
