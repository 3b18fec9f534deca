-- expect: refused: ALTER SYSTEM
-- execution: refused
-- reason: line 4: ALTER SYSTEM:
ALTER SYSTEM SET work_mem = '1GB';
