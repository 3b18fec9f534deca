-- expect: refused: SAVEPOINT
-- execution: refused
-- reason: line 4: transaction control
SAVEPOINT s1;
