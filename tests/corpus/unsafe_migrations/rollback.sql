-- expect: refused: ROLLBACK
-- execution: refused
-- reason: line 4: transaction control
ROLLBACK;
