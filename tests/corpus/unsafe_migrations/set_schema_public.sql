-- expect: refused: move a tenant table into public
-- execution: refused
-- reason: line 5: SET SCHEMA
CREATE TABLE t (id int);
ALTER TABLE t SET SCHEMA public;
