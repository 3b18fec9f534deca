-- expect: refused: MERGE into a shared table
-- execution: refused
-- reason: line 4: writes public.plans
MERGE INTO public.plans p USING (SELECT 1 AS id) s ON p.id = s.id
WHEN MATCHED THEN DELETE;
