-- expect: refused: update a shared table
-- execution: refused
-- reason: line 4: writes public.plans
UPDATE public.plans SET price = 0;
