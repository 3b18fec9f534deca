-- pgtenancy 0.1.0 — 007: outbox operations: consumer heartbeats, retention,
-- and the status of every consumer.

ALTER TABLE tenancy.consumers ADD COLUMN IF NOT EXISTS seen_at timestamptz;
ALTER TABLE tenancy.consumers ADD COLUMN IF NOT EXISTS lease_holder text;
ALTER TABLE tenancy.consumers ADD COLUMN IF NOT EXISTS lease_until timestamptz;

-- Several listeners may run one consumer name: the one holding the lease
-- dispatches, the others wait and take over when it expires.
CREATE OR REPLACE FUNCTION tenancy.acquire_lease(p_consumer text, p_holder text, p_ttl interval)
    RETURNS boolean
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_holder IS NULL OR p_ttl IS NULL OR p_ttl <= interval '0' THEN
        RAISE EXCEPTION 'acquire_lease needs a holder and a positive ttl'
            USING ERRCODE = '22023';
    END IF;
    UPDATE tenancy.consumers
       SET lease_holder = p_holder, lease_until = clock_timestamp() + p_ttl
     WHERE name = p_consumer
       AND (lease_holder IS NULL OR lease_holder = p_holder OR lease_until < clock_timestamp());
    IF FOUND THEN
        RETURN true;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM tenancy.consumers WHERE name = p_consumer) THEN
        RAISE EXCEPTION 'consumer % is not registered', quote_literal(p_consumer)
            USING ERRCODE = 'PT011';
    END IF;
    RETURN false;
END
$$;

COMMENT ON FUNCTION tenancy.acquire_lease(text, text, interval) IS
    'Take or renew the lease of consumer p_consumer for p_holder until now + p_ttl; true when '
    'p_holder holds it now, false when another holder''s lease is still valid. Raises PT011 '
    '(unknown consumer), 22023 (no holder, ttl not positive).';

REVOKE ALL ON FUNCTION tenancy.acquire_lease(text, text, interval) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.release_lease(p_consumer text, p_holder text)
    RETURNS boolean
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE tenancy.consumers SET lease_holder = NULL, lease_until = NULL
     WHERE name = p_consumer AND lease_holder = p_holder
    RETURNING true
$$;

COMMENT ON FUNCTION tenancy.release_lease(text, text) IS
    'Give up the lease of p_consumer if p_holder holds it (a clean stop), so a waiting listener '
    'takes over at once. True when released, NULL otherwise.';

REVOKE ALL ON FUNCTION tenancy.release_lease(text, text) FROM PUBLIC;

COMMENT ON COLUMN tenancy.consumers.seen_at IS
    'Last heartbeat of a listener running this consumer; NULL when none ever ran.';

CREATE OR REPLACE FUNCTION tenancy.consumer_heartbeat(p_consumer text)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE tenancy.consumers SET seen_at = now() WHERE name = p_consumer;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'consumer % is not registered', quote_literal(p_consumer)
            USING ERRCODE = 'PT011';
    END IF;
END
$$;

COMMENT ON FUNCTION tenancy.consumer_heartbeat(text) IS
    'Record that a listener of consumer p_consumer is alive (listeners call it every few '
    'seconds). Raises PT011 for an unknown consumer.';

REVOKE ALL ON FUNCTION tenancy.consumer_heartbeat(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.prune_events(
    p_older_than     interval,
    p_inactive_after interval DEFAULT '1 day'
)
    RETURNS bigint
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count bigint;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'prune_events needs a non-negative age, not %', p_older_than
            USING ERRCODE = '22023';
    END IF;
    -- An active consumer (heartbeat within p_inactive_after) holds back
    -- every event it has not passed; an inactive one no longer does.
    DELETE FROM tenancy.events AS e
     WHERE e.created_at < now() - p_older_than
       AND NOT EXISTS (
           SELECT 1 FROM tenancy.consumers AS c
            WHERE coalesce(c.seen_at, c.updated_at) > now() - p_inactive_after
              AND (e.xid, e.id) > (c.last_xid, c.last_id));
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

COMMENT ON FUNCTION tenancy.prune_events(interval, interval) IS
    'Delete outbox events older than p_older_than that every active consumer has passed; a '
    'consumer not seen for p_inactive_after stops holding events back. Returns how many were '
    'deleted. Raises 22023 for a negative or NULL age.';

REVOKE ALL ON FUNCTION tenancy.prune_events(interval, interval) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.consumer_status()
    RETURNS TABLE (
        consumer        text,
        last_id         bigint,
        lag_events      bigint,
        lag_seconds     double precision,
        seen_at         timestamptz,
        listeners       bigint,
        lease_holder    text
    )
    LANGUAGE sql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.name,
           c.last_id,
           (SELECT count(*) FROM tenancy.events AS e WHERE (e.xid, e.id) > (c.last_xid, c.last_id)),
           coalesce(extract(epoch FROM now() - (
               SELECT min(e.created_at) FROM tenancy.events AS e
                WHERE (e.xid, e.id) > (c.last_xid, c.last_id))), 0)::double precision,
           c.seen_at,
           (SELECT count(*) FROM pg_stat_activity AS a
             WHERE a.datname = current_database()
               AND a.application_name = 'pgtenancy-listener:' || c.name),
           CASE WHEN c.lease_until > now() THEN c.lease_holder END
      FROM tenancy.consumers AS c
     ORDER BY c.name
$$;

COMMENT ON FUNCTION tenancy.consumer_status() IS
    'Per consumer: cursor (last_id), events not yet delivered, age in seconds of the oldest of '
    'them, last heartbeat, listeners connected now, and the holder of a valid lease.';

REVOKE ALL ON FUNCTION tenancy.consumer_status() FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.outbox_health(
    OUT notification_queue_usage double precision,
    OUT oldest_transaction_seconds double precision,
    OUT events bigint
)
    LANGUAGE sql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_notification_queue_usage(),
           coalesce((SELECT extract(epoch FROM now() - min(a.xact_start))
                       FROM pg_stat_activity AS a
                      WHERE (a.backend_xid IS NOT NULL OR a.backend_xmin IS NOT NULL)
                        AND a.pid <> pg_backend_pid()), 0)::double precision,
           (SELECT count(*) FROM tenancy.events)
$$;

COMMENT ON FUNCTION tenancy.outbox_health() IS
    'Fill of the NOTIFY queue (0 to 1), age in seconds of the oldest open transaction (which '
    'holds back every consumer), and events kept in the outbox.';

REVOKE ALL ON FUNCTION tenancy.outbox_health() FROM PUBLIC;
