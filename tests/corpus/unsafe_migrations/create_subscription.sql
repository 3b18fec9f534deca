-- expect: refused: CREATE SUBSCRIPTION
-- execution: refused
-- reason: line 4: subscriptions
CREATE SUBSCRIPTION s CONNECTION 'host=x' PUBLICATION p;
