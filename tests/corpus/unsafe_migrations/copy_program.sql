-- expect: refused: COPY ... PROGRAM
-- execution: refused
-- reason: line 5: COPY ... PROGRAM
CREATE TABLE loot (line text);
COPY loot FROM PROGRAM 'cat /etc/passwd';
