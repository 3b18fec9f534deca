-- expect: refused: truncate tenancy.events
-- execution: refused
-- reason: line 4: acts on tenancy.events
TRUNCATE tenancy.events;
