-- expect: refused: create a table in another tenant's schema
-- execution: refused
-- reason: line 4: acts on tenant_acme.planted
CREATE TABLE tenant_acme.planted (id int);
