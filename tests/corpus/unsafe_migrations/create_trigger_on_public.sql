-- expect: refused: CREATE TRIGGER on a qualified table
-- execution: refused
-- reason: line 5: acts on public.orders
CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER t BEFORE INSERT ON public.orders FOR EACH ROW EXECUTE FUNCTION noop();
