-- pgtenancy — 007: outbox operations: consumer heartbeats, retention,
-- and the status of every consumer.

-- Events parked for one receiver: it kept failing, the consumer went on.
CREATE TABLE IF NOT EXISTS tenancy.parked_events (
    consumer  text        NOT NULL,
    event_id  bigint      NOT NULL,
    receiver  text        NOT NULL,
    attempts  integer     NOT NULL,
    error     text        NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT parked_events_pkey PRIMARY KEY (consumer, event_id, receiver)
);

COMMENT ON TABLE tenancy.parked_events IS
    'Events a receiver (by dispatch_uid or module.qualname) failed on after its retries; '
    'pgtenancy events retry delivers them again to that receiver only.';

-- The inbox: effectively-once effects in this database. A receiver claims
-- (receiver, event) in the same transaction as its own writes; a redelivered
-- event finds the claim and is skipped, and a rolled-back transaction takes
-- its claim with it.
CREATE TABLE IF NOT EXISTS tenancy.inbox (
    receiver     text        NOT NULL,
    event_id     bigint      NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT inbox_pkey PRIMARY KEY (receiver, event_id)
);

COMMENT ON TABLE tenancy.inbox IS
    'Events each receiver (dispatch_uid) has applied, written in the receiver''s own transaction.';

-- Several listeners may run one consumer name: the one holding the lease
-- dispatches, the others wait and take over when it expires.
CREATE OR REPLACE FUNCTION tenancy.acquire_lease(consumer text, holder text, ttl interval)
    RETURNS boolean
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF acquire_lease.holder IS NULL OR acquire_lease.ttl IS NULL OR acquire_lease.ttl <= interval '0' THEN
        RAISE EXCEPTION 'acquire_lease needs a holder and a positive ttl'
            USING ERRCODE = '22023';
    END IF;
    UPDATE tenancy.consumers
       SET lease_holder = acquire_lease.holder, lease_until = clock_timestamp() + acquire_lease.ttl
     WHERE name = acquire_lease.consumer
       AND (lease_holder IS NULL OR lease_holder = acquire_lease.holder OR lease_until < clock_timestamp());
    IF FOUND THEN
        RETURN true;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM tenancy.consumers WHERE name = acquire_lease.consumer) THEN
        RAISE EXCEPTION 'consumer % is not registered', quote_literal(acquire_lease.consumer)
            USING ERRCODE = 'PT011';
    END IF;
    RETURN false;
END
$$;

COMMENT ON FUNCTION tenancy.acquire_lease(text, text, interval) IS
    'Take or renew the lease of the consumer for holder until now + ttl; true when '
    'holder holds it now, false when another holder''s lease is still valid. Raises PT011 '
    '(unknown consumer), 22023 (no holder, ttl not positive).';

REVOKE ALL ON FUNCTION tenancy.acquire_lease(text, text, interval) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.release_lease(consumer text, holder text)
    RETURNS boolean
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE tenancy.consumers SET lease_holder = NULL, lease_until = NULL
     WHERE name = release_lease.consumer AND lease_holder = release_lease.holder
    RETURNING true
$$;

COMMENT ON FUNCTION tenancy.release_lease(text, text) IS
    'Give up the lease of consumer if holder holds it (a clean stop), so a waiting listener '
    'takes over at once. True when released, NULL otherwise.';

REVOKE ALL ON FUNCTION tenancy.release_lease(text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.consumer_heartbeat(consumer text)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE tenancy.consumers SET seen_at = now() WHERE name = consumer_heartbeat.consumer;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'consumer % is not registered', quote_literal(consumer_heartbeat.consumer)
            USING ERRCODE = 'PT011';
    END IF;
END
$$;

COMMENT ON FUNCTION tenancy.consumer_heartbeat(text) IS
    'Record that a listener of the consumer is alive (listeners call it every few '
    'seconds). Raises PT011 for an unknown consumer.';

REVOKE ALL ON FUNCTION tenancy.consumer_heartbeat(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.prune_events(
    older_than     interval,
    inactive_after interval DEFAULT NULL
)
    RETURNS bigint
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count    bigint;
    v_inactive interval := coalesce(prune_events.inactive_after, tenancy.consumer_inactive_after());
BEGIN
    IF prune_events.older_than IS NULL OR prune_events.older_than < interval '0' THEN
        RAISE EXCEPTION 'prune_events needs a non-negative age, not %', prune_events.older_than
            USING ERRCODE = '22023';
    END IF;
    -- An active consumer (heartbeat within prune_events.inactive_after) holds back
    -- every event it has not passed; an inactive one no longer does.
    DELETE FROM tenancy.events AS e
     WHERE e.created_at < now() - prune_events.older_than
       AND NOT EXISTS (
           SELECT 1 FROM tenancy.consumers AS c
            WHERE (coalesce(c.seen_at, c.updated_at) > now() - v_inactive
                   OR c.lease_until > now())
              AND (e.xid, e.id) > (c.last_xid, c.last_id))
       AND NOT EXISTS (SELECT 1 FROM tenancy.parked_events AS p WHERE p.event_id = e.id);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    -- A pruned event is never redelivered: its inbox claims are done with.
    DELETE FROM tenancy.inbox AS i
     WHERE NOT EXISTS (SELECT 1 FROM tenancy.events AS e WHERE e.id = i.event_id);
    RETURN v_count;
END
$$;

COMMENT ON FUNCTION tenancy.prune_events(interval, interval) IS
    'Delete outbox events older than older_than that every active consumer has passed and no '
    'receiver has parked; a consumer not seen for inactive_after (default: '
    'consumer_inactive_after()) stops holding events back. Returns how many were '
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
    OUT events bigint,
    OUT held_back_events bigint,
    OUT prepared_transactions bigint,
    OUT oldest_prepared_seconds double precision,
    OUT xid_holders jsonb
)
    LANGUAGE sql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    -- What holds the snapshot xmin back, so that no consumer may pass: open
    -- transactions that have an xid (any database of the cluster) and
    -- prepared transactions, which no pg_stat_activity row shows.
    WITH holders AS (
        SELECT 'transaction'::text AS kind, a.pid::text AS holder, a.datname::text AS database,
               a.usename::text AS role, a.state AS state,
               extract(epoch FROM now() - a.xact_start)::double precision AS age_seconds
          FROM pg_stat_activity AS a
         WHERE a.backend_xid IS NOT NULL AND a.pid <> pg_backend_pid()
        UNION ALL
        SELECT 'prepared', p.gid, p.database::text, p.owner::text, 'prepared',
               extract(epoch FROM now() - p.prepared)::double precision
          FROM pg_prepared_xacts AS p
    )
    SELECT pg_notification_queue_usage(),
           greatest(
               coalesce((SELECT extract(epoch FROM now() - min(a.xact_start))
                           FROM pg_stat_activity AS a
                          WHERE (a.backend_xid IS NOT NULL OR a.backend_xmin IS NOT NULL)
                            AND a.pid <> pg_backend_pid()), 0),
               coalesce((SELECT max(h.age_seconds) FROM holders AS h WHERE h.kind = 'prepared'), 0)
           )::double precision,
           (SELECT count(*) FROM tenancy.events),
           (SELECT count(*) FROM tenancy.events AS e
             WHERE e.xid >= pg_snapshot_xmin(pg_current_snapshot())),
           (SELECT count(*) FROM holders AS h WHERE h.kind = 'prepared'),
           coalesce((SELECT max(h.age_seconds) FROM holders AS h WHERE h.kind = 'prepared'),
                    0)::double precision,
           coalesce((SELECT jsonb_agg(jsonb_build_object(
                                'kind', h.kind, 'holder', h.holder, 'database', h.database,
                                'role', h.role, 'state', h.state,
                                'age_seconds', round(h.age_seconds::numeric, 3))
                            ORDER BY h.age_seconds DESC)
                       FROM (SELECT * FROM holders ORDER BY age_seconds DESC LIMIT 20) AS h),
                    '[]'::jsonb)
$$;

COMMENT ON FUNCTION tenancy.outbox_health() IS
    'Fill of the NOTIFY queue (0 to 1); age in seconds of the oldest open or prepared '
    'transaction (which holds back every consumer); events kept in the outbox; events '
    'committed or running but held back by an older transaction; prepared transactions and '
    'the age of the oldest; the 20 oldest xid holders (open transactions with an xid in any '
    'database, prepared transactions) as [{kind, holder (pid or gid), database, role, state, '
    'age_seconds}].';

REVOKE ALL ON FUNCTION tenancy.outbox_health() FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.start_consumer(consumer text, start_from text DEFAULT 'oldest')
    RETURNS tenancy.consumers
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row tenancy.consumers;
    v_xid xid8;
    v_id  bigint;
BEGIN
    IF start_consumer.start_from IS NULL OR start_consumer.start_from NOT IN ('oldest', 'now') THEN
        RAISE EXCEPTION 'start_from must be ''oldest'' or ''now'', not %',
            coalesce(quote_literal(start_consumer.start_from), 'NULL')
            USING ERRCODE = '22023';
    END IF;
    SELECT * INTO v_row FROM tenancy.consumers AS c WHERE c.name = start_consumer.consumer;
    IF FOUND THEN
        RETURN v_row;
    END IF;
    v_row := tenancy.register_consumer(start_consumer.consumer);
    IF start_consumer.start_from = 'now' THEN
        -- After the newest event readable now; events of transactions still
        -- running sort after it and are delivered.
        SELECT e.xid, e.id INTO v_xid, v_id
          FROM tenancy.events AS e
         WHERE e.xid < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY e.xid DESC, e.id DESC
         LIMIT 1;
        IF FOUND THEN
            UPDATE tenancy.consumers AS c SET last_xid = v_xid, last_id = v_id
             WHERE c.name = start_consumer.consumer
            RETURNING * INTO v_row;
        END IF;
    END IF;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.start_consumer(text, text) IS
    'Register consumer unless it exists, with its cursor at the start of the outbox '
    '(start_from = oldest, as register_consumer) or after the newest event readable now '
    '(now: the retained history is not replayed); an existing consumer is returned unchanged. '
    'Raises 22023 for an invalid name or start_from.';

REVOKE ALL ON FUNCTION tenancy.start_consumer(text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.drop_consumer(consumer text)
    RETURNS boolean
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM tenancy.parked_events AS p WHERE p.consumer = drop_consumer.consumer;
    DELETE FROM tenancy.consumers AS c WHERE c.name = drop_consumer.consumer;
    RETURN FOUND;
END
$$;

COMMENT ON FUNCTION tenancy.drop_consumer(text) IS
    'Forget consumer: its cursor, lease and parked events; it no longer holds events back from '
    'prune_events. True when it existed. For the kit''s owner (pgtenancy events drop-consumer).';

REVOKE ALL ON FUNCTION tenancy.drop_consumer(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.park_event(
    consumer text, event_id bigint, receiver text, attempts integer, error text
)
    RETURNS void
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO tenancy.parked_events AS p (consumer, event_id, receiver, attempts, error)
    VALUES (park_event.consumer, park_event.event_id, park_event.receiver, park_event.attempts, park_event.error)
    ON CONFLICT (consumer, event_id, receiver) DO UPDATE
       SET attempts = p.attempts + excluded.attempts, error = excluded.error, parked_at = now()
$$;

COMMENT ON FUNCTION tenancy.park_event(text, bigint, text, integer, text) IS
    'Park event event_id of the consumer for the receiver with its last error; '
    'parking it again adds the attempts.';

REVOKE ALL ON FUNCTION tenancy.park_event(text, bigint, text, integer, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.unpark_event(consumer text, event_id bigint, receiver text)
    RETURNS boolean
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM tenancy.parked_events
     WHERE consumer = unpark_event.consumer AND event_id = unpark_event.event_id AND receiver = unpark_event.receiver
    RETURNING true
$$;

COMMENT ON FUNCTION tenancy.unpark_event(text, bigint, text) IS
    'Forget a parked event once its receiver has run it; true when one was removed.';

REVOKE ALL ON FUNCTION tenancy.unpark_event(text, bigint, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.parked_events(consumer_name text DEFAULT NULL)
    RETURNS TABLE (
        consumer text, receiver text, attempts integer, error text, parked_at timestamptz,
        id bigint, xid text, name text, tenant_id uuid, tenant_slug text, tenant_schema text,
        tenant_status text, payload jsonb, created_at timestamptz
    )
    LANGUAGE sql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p.consumer, p.receiver, p.attempts, p.error, p.parked_at,
           e.id, e.xid::text, e.name, e.tenant_id, e.tenant_slug, e.tenant_schema,
           e.tenant_status, e.payload, e.created_at
      FROM tenancy.parked_events AS p
      JOIN tenancy.events AS e ON e.id = p.event_id
     WHERE parked_events.consumer_name IS NULL OR p.consumer = parked_events.consumer_name
     ORDER BY p.consumer, e.xid, e.id, p.receiver
$$;

COMMENT ON FUNCTION tenancy.parked_events(text) IS
    'Parked events (of consumer_name, or all), with their receiver, attempts, last error and the '
    'event itself, in delivery order.';

REVOKE ALL ON FUNCTION tenancy.parked_events(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.inbox_claim(receiver text, event_id bigint)
    RETURNS boolean
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    -- Only an event that exists and is readable can be claimed: nobody can
    -- claim future events to make a receiver skip them.
    WITH claimed AS (
        INSERT INTO tenancy.inbox (receiver, event_id)
        SELECT inbox_claim.receiver, e.id FROM tenancy.events AS e
         WHERE e.id = inbox_claim.event_id AND e.xid < pg_snapshot_xmin(pg_current_snapshot())
        ON CONFLICT (receiver, event_id) DO NOTHING
        RETURNING true
    )
    SELECT coalesce((SELECT true FROM claimed), false)
$$;

COMMENT ON FUNCTION tenancy.inbox_claim(text, bigint) IS
    'Claim event event_id for the receiver in the current transaction: true the first '
    'time (apply the effect), false when already applied (skip it) or when no readable event has '
    'that id. Call it in the transaction that makes the effect.';

REVOKE ALL ON FUNCTION tenancy.inbox_claim(text, bigint) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.record_migration_failure(
    slug text, version text, sqlstate text, message text
)
    RETURNS bigint
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_row tenancy.tenants;
BEGIN
    SELECT * INTO v_row FROM tenancy.tenants WHERE slug = record_migration_failure.slug;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % not found', coalesce(quote_literal(record_migration_failure.slug), 'NULL')
            USING ERRCODE = 'PT003';
    END IF;
    RETURN tenancy.emit_event('tenant_migration_failed', v_row,
        jsonb_build_object('from_version', v_row.migration_version, 'to_version', record_migration_failure.version,
                           'sqlstate', record_migration_failure.sqlstate, 'message', record_migration_failure.message));
END
$$;

COMMENT ON FUNCTION tenancy.record_migration_failure(text, text, text, text) IS
    'Emit tenant_migration_failed for tenant slug (payload: from_version, to_version, sqlstate, '
    'message), in its own transaction after the failed migration rolled back. Raises PT003.';

REVOKE ALL ON FUNCTION tenancy.record_migration_failure(text, text, text, text) FROM PUBLIC;
