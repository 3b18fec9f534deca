-- pgtenancy — 002: the outbox and its consumers.
--
-- NOTIFY is only a wake-up: events live in tenancy.events, and a consumer
-- that missed a notification catches up from its cursor.  The payload is
-- constant, so Postgres folds all notifications of one transaction into one.

CREATE OR REPLACE FUNCTION tenancy.events_channel()
    RETURNS text
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS $$
    SELECT 'tenancy_events_v1'::pg_catalog.text
$$;

COMMENT ON FUNCTION tenancy.events_channel() IS
    'Name of the LISTEN/NOTIFY channel that wakes outbox consumers (payload is always empty).';

CREATE OR REPLACE FUNCTION tenancy.emit_event(
    p_name    text,
    p_tenant  tenancy.tenants,
    p_payload jsonb DEFAULT '{}'
)
    RETURNS bigint
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id bigint;
BEGIN
    INSERT INTO tenancy.events (name, tenant_id, tenant_slug, tenant_schema, tenant_status, payload)
    VALUES (p_name, p_tenant.id, p_tenant.slug, p_tenant.schema_name, p_tenant.status,
            coalesce(p_payload, '{}'))
    RETURNING id INTO v_id;
    PERFORM pg_notify(tenancy.events_channel(), '');
    RETURN v_id;
END
$$;

COMMENT ON FUNCTION tenancy.emit_event(text, tenancy.tenants, jsonb) IS
    'Append a lifecycle event for a tenant to the outbox in the current transaction and wake '
    'consumers (one NOTIFY per transaction). Returns the event id. Not granted to PUBLIC.';

REVOKE ALL ON FUNCTION tenancy.emit_event(text, tenancy.tenants, jsonb) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.register_consumer(consumer text)
    RETURNS tenancy.consumers
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row tenancy.consumers;
BEGIN
    IF register_consumer.consumer IS NULL OR register_consumer.consumer !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$' THEN
        RAISE EXCEPTION 'invalid consumer name %', coalesce(quote_literal(register_consumer.consumer), 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'Use 1 to 128 letters, digits, "_", ".", ":" or "-".';
    END IF;
    INSERT INTO tenancy.consumers (name) VALUES (register_consumer.consumer) ON CONFLICT (name) DO NOTHING;
    SELECT * INTO v_row FROM tenancy.consumers WHERE name = register_consumer.consumer;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.register_consumer(text) IS
    'Create the cursor of the named consumer at the start of the outbox unless it exists; '
    'return the cursor row. Raises 22023 for an invalid name.';

CREATE OR REPLACE FUNCTION tenancy.next_events(consumer text, max_events integer DEFAULT 100)
    RETURNS SETOF tenancy.events
    LANGUAGE plpgsql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cursor tenancy.consumers;
BEGIN
    SELECT * INTO v_cursor FROM tenancy.consumers WHERE name = next_events.consumer;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'consumer % is not registered', quote_literal(next_events.consumer)
            USING ERRCODE = 'PT011';
    END IF;
    -- Only transactions below the snapshot's xmin are finished for every
    -- snapshot: nothing can commit there any more, so the cursor may pass.
    RETURN QUERY
        SELECT e.*
          FROM tenancy.events AS e
         WHERE (e.xid, e.id) > (v_cursor.last_xid, v_cursor.last_id)
           AND e.xid < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY e.xid, e.id
         LIMIT next_events.max_events;
END
$$;

COMMENT ON FUNCTION tenancy.next_events(text, integer) IS
    'Up to max_events outbox events after the cursor of consumer, ordered by (xid, id), only from '
    'transactions that no snapshot can still see as running. Raises PT011 for an unknown consumer.';

CREATE OR REPLACE FUNCTION tenancy.events_held_back(consumer text)
    RETURNS boolean
    LANGUAGE sql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    -- Held-back events (xid >= xmin) sort after every readable one, so the
    -- newest event alone decides, found by a backward scan of the (xid, id)
    -- index whatever the table's statistics.
    SELECT EXISTS (
        SELECT 1
          FROM (SELECT e.xid, e.id FROM tenancy.events AS e
                 ORDER BY e.xid DESC, e.id DESC LIMIT 1) AS newest
          JOIN tenancy.consumers AS c ON c.name = events_held_back.consumer
         WHERE (newest.xid, newest.id) > (c.last_xid, c.last_id)
           AND newest.xid >= pg_snapshot_xmin(pg_current_snapshot())
    )
$$;

COMMENT ON FUNCTION tenancy.events_held_back(text) IS
    'True when committed events after the cursor of consumer wait for an older transaction '
    'to finish before they may be read; a consumer then polls again shortly.';

CREATE OR REPLACE FUNCTION tenancy.advance_consumer(
    consumer text,
    xid      xid8,
    id       bigint,
    holder   text DEFAULT NULL
)
    RETURNS boolean
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_cursor tenancy.consumers;
BEGIN
    SELECT * INTO v_cursor FROM tenancy.consumers WHERE name = advance_consumer.consumer FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'consumer % is not registered', quote_literal(advance_consumer.consumer)
            USING ERRCODE = 'PT011';
    END IF;
    -- A listener whose lease was taken over must not move the cursor of the
    -- one that took over; a lease that merely expired during a long event,
    -- with nobody taking over, is still its own.
    IF advance_consumer.holder IS NOT NULL AND v_cursor.lease_holder IS DISTINCT FROM advance_consumer.holder THEN
        RAISE EXCEPTION 'consumer %: the lease of % is lost', quote_literal(advance_consumer.consumer), advance_consumer.holder
            USING ERRCODE = 'PT015';
    END IF;
    -- Only to a delivered position: an event that exists and is readable.
    IF NOT EXISTS (SELECT 1 FROM tenancy.events
                    WHERE xid = advance_consumer.xid AND id = advance_consumer.id
                      AND xid < pg_snapshot_xmin(pg_current_snapshot())) THEN
        RAISE EXCEPTION 'no readable outbox event at (%, %)', advance_consumer.xid, advance_consumer.id
            USING ERRCODE = '22023';
    END IF;
    -- Delivering counts as being seen (prune_events keeps what it needs).
    UPDATE tenancy.consumers
       SET last_xid = CASE WHEN (last_xid, last_id) < (advance_consumer.xid, advance_consumer.id) THEN advance_consumer.xid ELSE last_xid END,
           last_id  = CASE WHEN (last_xid, last_id) < (advance_consumer.xid, advance_consumer.id) THEN advance_consumer.id ELSE last_id END,
           updated_at = now(), seen_at = now()
     WHERE name = advance_consumer.consumer;
    RETURN (v_cursor.last_xid, v_cursor.last_id) < (advance_consumer.xid, advance_consumer.id);
END
$$;

COMMENT ON FUNCTION tenancy.advance_consumer(text, xid8, bigint, text) IS
    'Move the cursor of consumer forward to (xid, id), which must be a readable event; never '
    'backward. With holder, only while no other holder has taken the consumer''s lease. Marks '
    'the consumer seen. True when it moved. '
    'Raises PT011 (unknown consumer), PT015 (lease lost), 22023 (not a readable event).';

-- The outbox functions are for listeners: the kit's owner, or roles granted
-- with tenancy.grant_listener_role().
REVOKE ALL ON FUNCTION tenancy.register_consumer(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.next_events(text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.events_held_back(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.advance_consumer(text, xid8, bigint, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.consumer_inactive_after()
    RETURNS interval
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(nullif(current_setting('pgtenancy.consumer_inactive_after', true), ''),
                    '1 day')::interval
$$;

COMMENT ON FUNCTION tenancy.consumer_inactive_after() IS
    'How long a consumer may go without a heartbeat before it stops holding events back: the '
    'setting pgtenancy.consumer_inactive_after (e.g. ALTER DATABASE ... SET '
    'pgtenancy.consumer_inactive_after = ''6 hours''), default 1 day.';
