-- expect: refused: CHECKPOINT
-- execution: refused
-- reason: line 4: CHECKPOINT
CHECKPOINT;
