-- expect: refused: CREATE USER MAPPING
-- execution: refused
-- reason: line 4: user mappings
CREATE USER MAPPING FOR app SERVER remote OPTIONS (user 'postgres');
