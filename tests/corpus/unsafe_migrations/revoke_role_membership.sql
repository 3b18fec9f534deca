-- expect: refused: revoke role membership
-- execution: refused
-- reason: line 4: role membership
REVOKE app FROM reporting;
