-- expect: refused: an expression index in a no-transaction file (its function would run as the owner)
-- execution: refused
-- reason: line 5: an expression or partial index
-- pgtenancy: no-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS t_evil ON t (evil(id));
