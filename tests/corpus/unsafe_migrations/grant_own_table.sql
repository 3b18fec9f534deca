-- expect: refused: GRANT on the tenant's own table to PUBLIC (every role of the cluster would get it)
-- execution: refused
-- reason: line 5: GRANT/REVOKE to PUBLIC
CREATE TABLE t (id int);
GRANT SELECT ON t TO PUBLIC;
