-- expect: refused: PREPARE TRANSACTION
-- execution: refused
-- reason: line 4: transaction control
PREPARE TRANSACTION 'x';
