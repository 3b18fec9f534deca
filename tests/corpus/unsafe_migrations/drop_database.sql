-- expect: refused: DROP DATABASE
-- execution: refused
-- reason: line 4: DROP DATABASE:
DROP DATABASE IF EXISTS other;
