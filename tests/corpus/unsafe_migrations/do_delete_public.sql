-- expect: refused: DO block deleting from a public table
-- execution: refused
-- reason: line 6: in a DO block: DELETE writes public.invoice
DO $$
BEGIN
    DELETE FROM public.invoice;
END
$$;
