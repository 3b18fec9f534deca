-- expect: allowed: set_config of an ordinary setting
-- execution: allowed
-- passes the gate
SELECT pg_catalog.set_config('lock_timeout', '1s', true);
CREATE TABLE t (id int);
