-- expect: refused: LOAD
-- execution: refused
-- reason: line 4: LOAD
LOAD 'auto_explain';
