-- expect: refused: DROP OWNED
-- execution: refused
-- reason: line 4: DROP OWNED
DROP OWNED BY app;
