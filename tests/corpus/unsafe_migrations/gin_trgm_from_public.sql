-- expect: allowed: an index with the pg_trgm opclass from public
-- execution: allowed
-- passes the gate
CREATE TABLE doc (title text);
CREATE INDEX doc_title_trgm ON doc USING gin (title public.gin_trgm_ops);
