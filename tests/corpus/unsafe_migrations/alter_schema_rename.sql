-- expect: refused: rename a schema
-- execution: refused
-- reason: line 4: RenameStmt of schema
ALTER SCHEMA tenant_acme RENAME TO tenant_gone;
