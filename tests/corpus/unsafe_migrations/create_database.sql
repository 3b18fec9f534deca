-- expect: refused: CREATE DATABASE
-- execution: refused
-- reason: line 4: CREATE DATABASE:
CREATE DATABASE other;
