-- expect: refused: attach a partition to a shared table
-- execution: refused
-- reason: line 4: changes public.events
CREATE TABLE events_acme PARTITION OF public.events FOR VALUES IN ('acme');
