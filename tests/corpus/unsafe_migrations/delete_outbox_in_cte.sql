-- expect: refused: empty tenancy.events from a CTE
-- execution: refused
-- reason: line 4: writes tenancy.events
WITH gone AS (DELETE FROM tenancy.events RETURNING id)
SELECT count(*) FROM gone;
