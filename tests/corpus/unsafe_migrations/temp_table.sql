-- expect: refused: CREATE TEMP TABLE (it would outlive the migration in the session)
-- execution: refused
-- reason: line 4: temporary objects outlive the migration
CREATE TEMP TABLE scratch (id int);
INSERT INTO scratch VALUES (1);
