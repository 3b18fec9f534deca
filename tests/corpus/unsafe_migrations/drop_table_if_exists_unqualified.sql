-- expect: allowed: DROP TABLE IF EXISTS legacy (unqualified: the database keeps it from reaching public)
-- execution: refused
-- passes the gate
DROP TABLE IF EXISTS legacy;
