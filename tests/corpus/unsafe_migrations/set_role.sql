-- expect: refused: SET ROLE
-- execution: refused
-- reason: line 4: SET/RESET role
SET ROLE postgres;
