-- expect: refused: CREATE DATABASE
-- execution: refused
-- reason: line 4: CreatedbStmt
CREATE DATABASE other;
