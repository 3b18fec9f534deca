-- expect: refused: REASSIGN OWNED
-- execution: refused
-- reason: line 4: REASSIGN OWNED
REASSIGN OWNED BY app TO postgres;
