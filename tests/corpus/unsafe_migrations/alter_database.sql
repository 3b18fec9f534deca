-- expect: refused: ALTER DATABASE
-- execution: refused
-- reason: line 4: ALTER DATABASE ... SET:
ALTER DATABASE postgres SET search_path = public;
