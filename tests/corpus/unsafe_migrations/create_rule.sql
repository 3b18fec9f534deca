-- expect: refused: a rule runs with its table owner's rights
-- execution: refused
-- reason: line 5: a rule runs with its table owner's rights
CREATE TABLE t (i int);
CREATE RULE r AS ON UPDATE TO t DO ALSO INSERT INTO t VALUES (0);
