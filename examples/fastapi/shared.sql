-- The shared table, applied once per database by the owner
-- (pgtenancy migrate --shared-dir, or as here in the tests).
CREATE TABLE public.plan (
    name         varchar(50) PRIMARY KEY,
    max_invoices integer NOT NULL
);
INSERT INTO public.plan VALUES ('free', 3), ('pro', 1000);
