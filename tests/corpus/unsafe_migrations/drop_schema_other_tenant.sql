-- expect: refused: drop another tenant's schema
-- execution: refused
-- reason: line 4: DropStmt of schema
DROP SCHEMA tenant_acme CASCADE;
