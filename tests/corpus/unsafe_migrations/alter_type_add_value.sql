-- expect: allowed: ALTER TYPE ... ADD VALUE in a no-transaction file
-- execution: allowed
-- passes the gate
-- pgtenancy: no-transaction
ALTER TYPE mood ADD VALUE IF NOT EXISTS 'meh';
