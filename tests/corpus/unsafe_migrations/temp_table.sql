-- expect: allowed: CREATE TEMP TABLE
-- execution: allowed
-- passes the gate
CREATE TEMP TABLE scratch (id int);
INSERT INTO scratch VALUES (1);
