-- expect: refused: ANALYZE in a no-transaction file (it would evaluate index expressions as the owner)
-- execution: refused
-- reason: line 5: ANALYZE evaluates index expressions
-- pgtenancy: no-transaction
ANALYZE t;
