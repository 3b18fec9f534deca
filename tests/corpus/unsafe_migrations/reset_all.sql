-- expect: refused: RESET ALL
-- execution: refused
-- reason: line 4: RESET ALL
RESET ALL;
