-- expect: refused: ALTER DATABASE
-- execution: refused
-- reason: line 4: AlterDatabaseSetStmt
ALTER DATABASE postgres SET search_path = public;
