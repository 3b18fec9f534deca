-- expect: allowed: DROP INDEX CONCURRENTLY in a marked file
-- execution: allowed
-- passes the gate
-- pgtenancy: no-transaction
DROP INDEX CONCURRENTLY IF EXISTS t_id;
VACUUM t;
