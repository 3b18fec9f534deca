-- expect: refused: CREATE CAST
-- execution: refused
-- reason: line 4: casts
CREATE CAST (text AS integer) WITH INOUT AS IMPLICIT;
