-- expect: refused: DROP TABLESPACE
-- execution: refused
-- reason: line 4: DROP TABLESPACE:
DROP TABLESPACE IF EXISTS fast;
