-- expect: refused: DROP DATABASE
-- execution: refused
-- reason: line 4: DropdbStmt
DROP DATABASE IF EXISTS other;
