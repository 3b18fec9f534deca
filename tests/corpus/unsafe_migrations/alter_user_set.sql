-- expect: refused: ALTER USER ... SET
-- execution: refused
-- reason: line 4: roles are database-wide
ALTER USER app SET search_path = public;
