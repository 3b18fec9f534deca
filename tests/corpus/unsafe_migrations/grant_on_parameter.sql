-- expect: refused: GRANT ON PARAMETER
-- execution: refused
-- reason: line 4: GRANT/REVOKE on a parameter_acl
GRANT SET ON PARAMETER work_mem TO app;
