-- expect: warned: set_config of search_path
-- execution: refused
-- warning: set_config() call
SELECT pg_catalog.set_config('search_path', 'public', true);
