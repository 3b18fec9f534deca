-- expect: refused: DISCARD
-- execution: refused
-- reason: line 4: DISCARD
DISCARD ALL;
