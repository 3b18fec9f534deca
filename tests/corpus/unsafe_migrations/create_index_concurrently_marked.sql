-- expect: allowed: CREATE INDEX CONCURRENTLY in a marked file
-- execution: allowed
-- passes the gate
-- pgtenancy: no-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS t_id ON t (id);
VACUUM t;
