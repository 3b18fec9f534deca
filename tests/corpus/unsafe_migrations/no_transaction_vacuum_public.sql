-- expect: refused: a no-transaction file vacuuming a qualified table
-- execution: refused
-- reason: line 5: acts on tenancy.events
-- pgtenancy: no-transaction
VACUUM tenancy.events;
