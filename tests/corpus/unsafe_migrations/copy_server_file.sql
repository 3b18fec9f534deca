-- expect: refused: COPY to a server file
-- execution: refused
-- reason: line 5: server file
CREATE TABLE loot (line text);
COPY loot TO '/tmp/loot.csv';
