-- expect: refused: SET LOCAL ROLE
-- execution: refused
-- reason: line 4: SET/RESET role
SET LOCAL ROLE postgres;
