-- expect: refused: CREATE FOREIGN DATA WRAPPER
-- execution: refused
-- reason: line 4: foreign data wrappers
CREATE FOREIGN DATA WRAPPER mine;
