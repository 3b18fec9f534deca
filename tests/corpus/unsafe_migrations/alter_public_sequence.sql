-- expect: refused: restart a shared sequence
-- execution: refused
-- reason: line 4: acts on public.invoice_id_seq
ALTER SEQUENCE public.invoice_id_seq RESTART;
