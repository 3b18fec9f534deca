-- expect: refused: a prepared DELETE of the outbox
-- execution: refused
-- reason: line 4: writes tenancy.events
PREPARE purge AS DELETE FROM tenancy.events;
