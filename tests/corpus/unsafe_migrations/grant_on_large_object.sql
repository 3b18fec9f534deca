-- expect: refused: GRANT ON LARGE OBJECT
-- execution: refused
-- reason: line 4: GRANT/REVOKE on a largeobject
GRANT SELECT ON LARGE OBJECT 1234 TO app;
