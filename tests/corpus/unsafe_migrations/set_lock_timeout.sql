-- expect: allowed: SET LOCAL of an ordinary setting
-- execution: allowed
-- passes the gate
SET LOCAL lock_timeout = '1s';
CREATE TABLE t (id int);
