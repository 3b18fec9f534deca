-- expect: allowed: GRANT on the tenant's own table to the application role
-- execution: allowed
-- passes the gate
CREATE TABLE t (id int);
GRANT SELECT ON t TO app;
