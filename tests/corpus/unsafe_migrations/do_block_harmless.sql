-- expect: warned: a DO block that only reads
-- execution: allowed
-- warning: DO block
CREATE TABLE t (id int);
DO $$
BEGIN
    PERFORM count(*) FROM t;
END
$$;
