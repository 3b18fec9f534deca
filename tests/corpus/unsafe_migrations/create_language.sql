-- expect: refused: CREATE LANGUAGE
-- execution: refused
-- reason: line 4: languages
CREATE LANGUAGE plsample HANDLER plsample_call_handler;
