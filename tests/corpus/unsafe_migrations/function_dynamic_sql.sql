-- expect: warned: a function building SQL with format and EXECUTE
-- execution: allowed
-- warning: runs dynamic SQL
CREATE TABLE t (id int);
CREATE FUNCTION purge(tbl text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DELETE FROM %I', tbl);
END
$$;
