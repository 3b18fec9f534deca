-- expect: allowed: a foreign key to a shared table
-- execution: allowed
-- passes the gate
CREATE TABLE invoice_note (
    id bigint PRIMARY KEY,
    account_id bigint REFERENCES public.accounts (id)
);
