-- expect: refused: CREATE TYPE in public
-- execution: refused
-- reason: line 4: acts on public.mood
CREATE TYPE public.mood AS ENUM ('a');
