-- expect: refused: CREATE PUBLICATION
-- execution: refused
-- reason: line 4: publications
CREATE PUBLICATION everything FOR ALL TABLES;
