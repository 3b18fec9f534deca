-- expect: refused: SET SESSION AUTHORIZATION
-- execution: refused
-- reason: line 4: SET/RESET session_authorization
SET SESSION AUTHORIZATION postgres;
