-- expect: refused: write a shared table
-- execution: refused
-- reason: line 4: writes public.audit
INSERT INTO public.audit (what) VALUES ('x');
