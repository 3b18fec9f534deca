-- expect: refused: ALTER SYSTEM
-- execution: refused
-- reason: line 4: AlterSystemStmt
ALTER SYSTEM SET work_mem = '1GB';
