-- expect: refused: GRANT ON LANGUAGE
-- execution: refused
-- reason: line 4: GRANT/REVOKE on a language
GRANT USAGE ON LANGUAGE plpgsql TO app;
