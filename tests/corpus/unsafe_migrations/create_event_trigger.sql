-- expect: refused: CREATE EVENT TRIGGER
-- execution: refused
-- reason: line 4: event triggers
CREATE EVENT TRIGGER no_ddl ON ddl_command_start EXECUTE FUNCTION f();
