-- expect: refused: empty tenancy.events
-- execution: refused
-- reason: line 4: writes tenancy.events
DELETE FROM tenancy.events;
