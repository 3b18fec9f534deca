-- expect: allowed: GRANT on the tenant's own table
-- execution: allowed
-- passes the gate
CREATE TABLE t (id int);
GRANT SELECT ON t TO PUBLIC;
