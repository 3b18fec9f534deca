"""Benchmarks of pgtenancy's events, as ratios against baselines run side by side.

Run from the repository root::

    .venv/bin/python bench/bench_events.py

Everything runs in one process against one server: ``DATABASE_URL`` when set,
else whatever :func:`pgtenancy.testing.find_server` finds or starts (a Docker
container or a throwaway local cluster, started with ``fsync=off`` and
``synchronous_commit=off``), in a fresh database that is dropped at the end.
Absolute numbers depend on the machine and the server settings; the ratios are
the point, because both sides of each ratio ran on the same server, in the same
run, interleaved.

The three parts below run in the order 2, 1, 3, each reported with its baseline.

1. **Delivery throughput.** Lifecycle events per second that reach a Python
   receiver. The pgtenancy side: ``--events`` ``tenant_resumed`` events of
   tenant ``acme`` are written to the outbox in one transaction (with
   ``tenancy.emit_event``, untimed), then a :class:`pgtenancy.Listener` with a
   fresh consumer name, whose cursor starts at the end of the outbox before
   them, runs in a thread with a receiver connected to
   ``pgtenancy.signals.tenant_resumed`` that counts; the time runs from the
   thread's start (connection and LISTEN included) to the last event's
   delivery, then the listener is stopped and joined. It runs once with
   ``batch_size=100`` (the default) and once with ``batch_size=1000``. The
   baseline is the physical limit of LISTEN/NOTIFY on the same server: one
   autocommit connection LISTENs and a thread counts its ``notifies()``, while
   another connection sends as many notifications as fast as it can
   (``pg_notify`` over ``generate_series``, distinct payloads, 1000 per
   committed transaction); its time runs from the first send to the last
   receipt. ``--rounds`` rounds rotate the order of the three sides; the table
   shows medians. The listener reads every event from the table, builds an
   :class:`~pgtenancy.events.Event`, sends the signal and moves its durable
   cursor once per batch; the baseline only counts notifications, which carry
   no state and are lost when nobody listens.

2. **Latency at a steady rate.** First the outbox is topped up to
   ``--outbox-events`` old events (default 100,000: an outbox pruned weekly
   holds far more) and analyzed, as autovacuum would have done, since the
   listener's queries run against it and their plans depend on its statistics.
   Then a producer thread commits one event per transaction (autocommit) at
   ``--latency-rate`` events/s for ``--latency-seconds`` after a 0.5 s warm-up
   whose events are not counted. pgtenancy: ``SELECT
   tenancy.emit_event('tenant_resumed', t, jsonb_build_object('seq', ...,
   'sent', ...))``, received by a :class:`~pgtenancy.Listener` with its
   defaults (a fresh consumer starting at the end of the outbox) through the
   ``tenant_resumed`` signal. Baseline: ``SELECT pg_notify(channel, payload)``
   with the same JSON payload, received by a thread looping over
   ``notifies()`` of a LISTEN connection. On both sides the latency of an
   event is the wall-clock time (``time.time()``, one process) from the moment
   the producer's statement returned, i.e. the commit done, to the moment the
   receiver got it; the producer records the first, the receiver the second,
   and the event's sequence number pairs them. (A receiver can get an event a
   few microseconds before the producer's statement returns, so a latency can
   be slightly negative.) The report gives p50, p99 and the maximum in ms of
   each side; ``--json`` adds the latencies from before the statement was sent.

3. **Writes to a tracked table.** Tenants ``tracked`` and ``untracked`` get
   ``item (id bigint PRIMARY KEY, v text NOT NULL)`` from a tenant migration;
   ``tenant_tracked.item`` is tracked with ``tenancy.track_changes``
   (statement-level triggers with transition tables writing a ``rows_changed``
   event to the outbox in the writing transaction; no NOTIFY). Two threads,
   each with its own autocommit psycopg connection, insert one row per
   transaction (``INSERT INTO tenant_x.item (id, v) VALUES (%s, %s)``, the
   table schema-qualified, no tenant context; raw psycopg, so no ORM time
   dilutes the triggers' cost). ``--rounds`` rounds of ``--seconds`` per side;
   within a round the sides take turns of 0.25 s and which goes first
   alternates from round to round; the table shows the median rows per second
   of each side and ``tracked / untracked``. Afterwards the script checks that
   the tracked table's rows each have a row-change event in the outbox, and
   that the untracked table has none.

Reading the ratios: 1.0 means pgtenancy costs nothing over the baseline; 0.8
means it reaches 80% of the baseline's rate. The script asserts nothing about
timings; it checks that every event was delivered once and that both sides of
each ratio did the same work. The goals it reports against (at least 5,000
events/s delivered, p50 under 10 ms and p99 under 100 ms at 500 events/s,
tracked writes at least 0.7 of untracked) are printed as met or missed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql

from common import (
    BaseResults,
    TableRow,
    add_json_option,
    add_round_options,
    bench_database,
    bench_parser,
    log,
    positive_float,
    positive_int,
    print_results,
    ratio_table,
    report_title,
)
from pgtenancy import Event, Listener, Tenancy
from pgtenancy.signals import tenant_resumed

TENANT = "acme"
BATCH_SIZES = (100, 1000)
NOTIFY_CHUNK = 1000
FILL_CHUNK = 20000
CHANNEL = "pgtenancy_bench"
WRITERS = 2
# Seconds per turn of a side within a round of the write benchmark.
WRITE_TURN = 0.25
LATENCY_WARM_UP = 0.5
# Seconds allowed for the last events to arrive, and for a listener to stop.
DRAIN_TIMEOUT = 30.0

# Goals of the issue the benchmark answers.
GOAL_EVENTS_PER_S = 5000.0
GOAL_P50_MS = 10.0
GOAL_P99_MS = 100.0
GOAL_WRITE_RATIO = 0.7

PRODUCE_EVENTS = (
    "SELECT count(tenancy.emit_event('tenant_resumed', t, '{}'))"
    " FROM tenancy.tenants AS t, generate_series(1, %(events)s) WHERE t.slug = %(slug)s"
)
EMIT_ONE = (
    "SELECT tenancy.emit_event('tenant_resumed', t,"
    " jsonb_build_object('seq', %(seq)s::int, 'sent', %(sent)s::float8))"
    " FROM tenancy.tenants AS t WHERE t.slug = %(slug)s"
)
NOTIFY_MANY = "SELECT count(pg_notify(%s, g::text)) FROM generate_series(%s::int, %s::int) AS g"
NOTIFY_ONE = "SELECT pg_notify(%s, %s)"
# A consumer that starts at the end of the outbox: registered, then moved to the
# newest event (nothing else writes while it is set up).
REGISTER_CONSUMER = "SELECT tenancy.register_consumer(%s)"
CONSUMER_AT_END = (
    "SELECT tenancy.advance_consumer(%s, e.xid, e.id)"
    " FROM tenancy.events AS e ORDER BY e.xid DESC, e.id DESC LIMIT 1"
)
ITEM_DDL = "CREATE TABLE item (id bigint PRIMARY KEY, v text NOT NULL)"
WRITE_SIDES = ("tracked", "untracked")


@dataclass(frozen=True)
class Results(BaseResults):
    """Everything the run measured; ``--json`` prints it as one object."""

    events: int
    notify_chunk: int
    listener_events_per_s: dict[str, float]
    notify_events_per_s: float
    delivery_ratio: dict[str, float]
    best_batch_size: int
    listener_first_event_ms: dict[str, float]
    delivery_rounds: dict[str, list[float]]
    latency_rate: float
    latency_seconds: float
    latency_samples: int
    latency_outbox_events: int
    listener_offered_per_s: float
    notify_offered_per_s: float
    listener_p50_ms: float
    listener_p99_ms: float
    listener_max_ms: float
    notify_p50_ms: float
    notify_p99_ms: float
    notify_max_ms: float
    listener_from_send_p50_ms: float
    listener_from_send_p99_ms: float
    notify_from_send_p50_ms: float
    notify_from_send_p99_ms: float
    writers: int
    tracked_rows_per_s: float
    untracked_rows_per_s: float
    write_ratio: float
    write_rounds: dict[str, list[float]]
    tracked_rows: int
    tracked_events: int
    elapsed_seconds: float


# Helpers -----------------------------------------------------------------------


def non_negative_int(value: str) -> int:
    """argparse type: an int >= 0."""
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is < 0")
    return number


def consumer_name(purpose: str) -> str:
    """A fresh consumer name, so each measurement has its own cursor."""
    return f"bench-{purpose}-{uuid.uuid4().hex[:8]}"


def start_at_end(dsn: str, consumer: str) -> None:
    """Register ``consumer`` with its cursor after the newest event of the outbox."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(REGISTER_CONSUMER, (consumer,))
        conn.execute(CONSUMER_AT_END, (consumer,))


class ListenerThread:
    """A :class:`Listener` running in a thread while the ``with`` block runs;
    stopped and joined on exit, its error (if any) raised."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, name=f"listener-{listener.consumer}", daemon=True
        )

    def _run(self) -> None:
        try:
            self.listener.run()
        except BaseException as exc:  # reported by wait() and __exit__
            self.error = exc

    def __enter__(self) -> ListenerThread:
        self.thread.start()
        return self

    def wait(self, done: threading.Event, timeout: float, what: str) -> None:
        """Wait until ``done`` is set; raise when the listener dies or time is up."""
        deadline = time.monotonic() + timeout
        while not done.wait(0.05):
            if not self.thread.is_alive():
                raise RuntimeError(f"listener died before {what}") from self.error
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.listener.stop()
        self.thread.join(DRAIN_TIMEOUT)
        if exc is not None:
            return
        if self.thread.is_alive():
            raise RuntimeError(f"listener {self.listener.consumer} did not stop")
        if self.error is not None:
            raise RuntimeError("listener failed") from self.error


@dataclass
class Receiver:
    """A receiver of ``tenant_resumed`` connected while the ``with`` block runs."""

    fn: Callable[..., None]
    uid: str = ""

    def __enter__(self) -> Receiver:
        self.uid = f"bench-{uuid.uuid4().hex}"
        tenant_resumed.connect(self.fn, weak=False, dispatch_uid=self.uid)
        return self

    def __exit__(self, *exc: object) -> None:
        tenant_resumed.disconnect(dispatch_uid=self.uid)


class Counter:
    """Counts deliveries; ``done`` is set at the ``target``-th, whose time is ``last``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.done = threading.Event()

    def __call__(self, **_: Any) -> None:
        now = time.perf_counter()
        if self.count == 0:
            self.first = now
        self.count += 1
        if self.count == self.target:
            self.last = now
            self.done.set()


def percentile(values: Sequence[float], p: int) -> float:
    """The ``p``-th percentile of ``values`` (1 <= p <= 99, exclusive method)."""
    return statistics.quantiles(values, n=100)[p - 1]


# Part 1: delivery throughput -------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One delivery measurement: seconds from start to the last event, and to the first."""

    seconds: float
    first_seconds: float


def produce_events(dsn: str, events: int) -> None:
    """``events`` tenant_resumed events of TENANT in the outbox, one transaction."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(PRODUCE_EVENTS, {"events": events, "slug": TENANT}).fetchone()
        conn.commit()
    if row is None or row[0] != events:
        raise RuntimeError(f"emitted {row} events, not {events}")


def listener_delivery(dsn: str, events: int, batch_size: int) -> Delivery:
    """Deliver ``events`` pre-produced events with a Listener of ``batch_size``."""
    consumer = consumer_name(f"batch{batch_size}")
    start_at_end(dsn, consumer)
    produce_events(dsn, events)
    counter = Counter(events)
    listener = Listener(dsn, consumer, batch_size=batch_size)
    with Receiver(counter):
        start = time.perf_counter()
        with ListenerThread(listener) as running:
            running.wait(counter.done, DRAIN_TIMEOUT + events / 100, f"{events} events")
    if counter.count != events or listener.delivered != events:
        raise RuntimeError(
            f"expected {events} events, received {counter.count} "
            f"(listener delivered {listener.delivered})"
        )
    return Delivery(counter.last - start, counter.first - start)


def drain(conn: psycopg.Connection[Any], counter: Counter, timeout: float) -> None:
    """Count ``conn``'s notifications until ``counter`` is done or ``timeout`` passes."""
    for _ in conn.notifies(timeout=timeout, stop_after=counter.target - counter.count):
        counter()


def notify_delivery(dsn: str, events: int) -> Delivery:
    """Baseline: ``events`` raw notifications sent in chunks and received by a thread."""
    listen_sql = sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL))
    with (
        psycopg.connect(dsn, autocommit=True) as listening,
        psycopg.connect(dsn) as sending,
    ):
        listening.execute(listen_sql)
        counter = Counter(events)
        timeout = DRAIN_TIMEOUT + events / 100
        receiver = threading.Thread(
            target=drain, args=(listening, counter, timeout), name="notify-drain", daemon=True
        )
        receiver.start()
        start = time.perf_counter()
        try:
            for low in range(1, events + 1, NOTIFY_CHUNK):
                high = min(low + NOTIFY_CHUNK - 1, events)
                sending.execute(NOTIFY_MANY, (CHANNEL, low, high))
                sending.commit()
        finally:
            receiver.join(timeout)
    if counter.count != events:
        raise RuntimeError(f"sent {events} notifications, received {counter.count}")
    return Delivery(counter.last - start, counter.first - start)


def bench_delivery(dsn: str, events: int, rounds: int) -> dict[str, list[Delivery]]:
    """Per-round deliveries of each side ("notify", "batch100", ...), order rotating."""
    sides: list[tuple[str, Callable[[], Delivery]]] = [
        ("notify", partial(notify_delivery, dsn, events)),
        *((f"batch{size}", partial(listener_delivery, dsn, events, size)) for size in BATCH_SIZES),
    ]
    warm_up = min(events, 1000)
    notify_delivery(dsn, warm_up)
    for size in BATCH_SIZES:
        listener_delivery(dsn, warm_up, size)
    out: dict[str, list[Delivery]] = {label: [] for label, _ in sides}
    for r in range(rounds):
        shift = r % len(sides)
        for label, measure in sides[shift:] + sides[:shift]:
            out[label].append(measure())
        done = ", ".join(f"{label} {events / d[-1].seconds:.0f}" for label, d in out.items())
        log(f"  round {r + 1}/{rounds} (events/s): {done}")
    return out


# Part 2: latency -------------------------------------------------------------------


@dataclass(frozen=True)
class Offered:
    """What a producer did: per sequence number, the wall-clock time before its
    statement (``sent``) and when the statement returned, committed (``committed``)."""

    sent: list[float]
    committed: list[float]


class Arrivals:
    """Arrival times (``time.time()``) by sequence number. The probe, sequence
    number -1, sets ``ready``; the ``expected``-th other arrival sets ``complete``."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.at: dict[int, float] = {}
        self.duplicates = 0
        self.ready = threading.Event()
        self.complete = threading.Event()

    def record(self, seq: int) -> None:
        now = time.time()
        if seq < 0:
            self.ready.set()
            return
        if seq in self.at:
            self.duplicates += 1
            return
        self.at[seq] = now
        if len(self.at) == self.expected:
            self.complete.set()


def offer(send: Callable[[int, float], None], rate: float, count: int) -> Offered:
    """Call ``send(seq, time.time())`` for seq 0 .. count-1, one every 1/rate s on
    schedule (late calls go at once, the schedule does not slip)."""
    sent: list[float] = []
    committed: list[float] = []
    start = time.perf_counter()
    for seq in range(count):
        pause = start + seq / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        now = time.time()
        send(seq, now)
        committed.append(time.time())
        sent.append(now)
    return Offered(sent, committed)


def produce_in_thread(send: Callable[[int, float], None], rate: float, count: int) -> Offered:
    """:func:`offer` in a producer thread of its own; its result."""
    with ThreadPoolExecutor(1, thread_name_prefix="producer") as pool:
        return pool.submit(offer, send, rate, count).result()


def fill_outbox(dsn: str, events: int) -> int:
    """Top the outbox up to ``events`` events (FILL_CHUNK per transaction), then
    analyze it as autovacuum would have; the number of events it holds."""
    count = "SELECT count(*) FROM tenancy.events"
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(count).fetchone()
        missing = events - (int(row[0]) if row else 0)
        while missing > 0:
            chunk = min(FILL_CHUNK, missing)
            produce_events(dsn, chunk)
            missing -= chunk
        conn.execute("ANALYZE tenancy.events")
        row = conn.execute(count).fetchone()
    return int(row[0]) if row else 0


def listener_latency(dsn: str, rate: float, count: int) -> tuple[Offered, Arrivals]:
    """Events emitted one per transaction, received through a Listener (defaults)."""
    consumer = consumer_name("latency")
    start_at_end(dsn, consumer)
    arrivals = Arrivals(count)

    def on_event(event: Event, **_: Any) -> None:
        arrivals.record(int(event.payload["seq"]))

    def send(seq: int, sent: float) -> None:
        conn.execute(EMIT_ONE, {"seq": seq, "sent": sent, "slug": TENANT})

    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        Receiver(on_event),
        ListenerThread(Listener(dsn, consumer)) as running,
    ):
        send(-1, time.time())
        running.wait(arrivals.ready, DRAIN_TIMEOUT, "the listener to start")
        offered = produce_in_thread(send, rate, count)
        running.wait(arrivals.complete, DRAIN_TIMEOUT, f"{count} events")
    return offered, arrivals


def notify_latency(dsn: str, rate: float, count: int) -> tuple[Offered, Arrivals]:
    """Baseline: raw notifications, one per transaction, received by a LISTEN thread."""
    arrivals = Arrivals(count)
    stop = threading.Event()
    listen_sql = sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL))

    def receive() -> None:
        while not stop.is_set():
            for note in listening.notifies(timeout=0.05):
                arrivals.record(int(json.loads(note.payload)["seq"]))

    def send(seq: int, sent: float) -> None:
        sending.execute(NOTIFY_ONE, (CHANNEL, json.dumps({"seq": seq, "sent": sent})))

    with (
        psycopg.connect(dsn, autocommit=True) as listening,
        psycopg.connect(dsn, autocommit=True) as sending,
    ):
        listening.execute(listen_sql)
        receiver = threading.Thread(target=receive, name="notify-receiver", daemon=True)
        receiver.start()
        try:
            send(-1, time.time())
            if not arrivals.ready.wait(DRAIN_TIMEOUT):
                raise RuntimeError("timed out waiting for the probe notification")
            offered = produce_in_thread(send, rate, count)
            if not arrivals.complete.wait(DRAIN_TIMEOUT):
                raise RuntimeError(f"received {len(arrivals.at)} of {count} notifications")
        finally:
            stop.set()
            receiver.join(DRAIN_TIMEOUT)
    return offered, arrivals


@dataclass(frozen=True)
class Latency:
    """Latencies (ms) after the warm-up: from commit done, and from send, to receipt."""

    from_commit: list[float]
    from_send: list[float]
    offered_per_s: float


def latencies(offered: Offered, arrivals: Arrivals, skip: int) -> Latency:
    """The latencies of the events after the first ``skip`` (the warm-up)."""
    if arrivals.duplicates:
        raise RuntimeError(f"{arrivals.duplicates} events received twice")
    seqs = range(skip, len(offered.sent))
    got = arrivals.at
    span = offered.sent[-1] - offered.sent[skip]
    return Latency(
        [(got[s] - offered.committed[s]) * 1000 for s in seqs],
        [(got[s] - offered.sent[s]) * 1000 for s in seqs],
        (len(seqs) - 1) / span if span > 0 else 0.0,
    )


def bench_latency(dsn: str, rate: float, seconds: float) -> dict[str, Latency]:
    """Latencies of the baseline ("notify") and the listener ("listener"), one after
    the other, at ``rate`` events/s for ``seconds`` after the warm-up."""
    skip = round(rate * LATENCY_WARM_UP)
    count = skip + max(2, round(rate * seconds))
    out: dict[str, Latency] = {}
    for label, measure in (("notify", notify_latency), ("listener", listener_latency)):
        offered, arrivals = measure(dsn, rate, count)
        out[label] = lat = latencies(offered, arrivals, skip)
        log(
            f"  {label}: {len(lat.from_commit)} events at {lat.offered_per_s:.0f}/s, "
            f"p50 {statistics.median(lat.from_commit):.2f} ms, "
            f"p99 {percentile(lat.from_commit, 99):.2f} ms"
        )
    return out


# Part 3: writes to a tracked table ------------------------------------------------


def prepare_tables(tenancy: Tenancy) -> dict[str, sql.Composed]:
    """Tenants ``tracked`` and ``untracked`` with ``item`` from a tenant migration, the
    first tracked; the INSERT of each side."""
    tenancy.add_migration("0001_item", ITEM_DDL)
    inserts: dict[str, sql.Composed] = {}
    for slug in WRITE_SIDES:
        schema = tenancy.create_tenant(slug).schema_name
        if schema is None:
            raise RuntimeError(f"tenant {slug} has no schema")
        table = sql.Identifier(schema, "item")
        inserts[slug] = sql.SQL("INSERT INTO {} (id, v) VALUES (%s, %s)").format(table)
        if slug == "tracked":
            tenancy.track_changes(f"{schema}.item")
    return inserts


def write_turn(
    conns: Sequence[psycopg.Connection[Any]],
    insert: sql.Composed,
    seconds: float,
    ids: Iterator[int],
) -> tuple[int, float]:
    """Rows inserted by one thread per connection, one row per transaction, for
    ``seconds``, all threads together, and the mean time the threads took."""
    barrier = threading.Barrier(len(conns))

    def writer(conn: psycopg.Connection[Any]) -> tuple[int, float]:
        barrier.wait()
        count = 0
        start = now = time.perf_counter()
        deadline = start + seconds
        while now < deadline:
            ident = next(ids)
            conn.execute(insert, (ident, f"item {ident}"))
            count += 1
            now = time.perf_counter()
        return count, now - start

    with ThreadPoolExecutor(len(conns), thread_name_prefix="writer") as pool:
        done = list(pool.map(writer, conns))
    return sum(c for c, _ in done), statistics.fmean(t for _, t in done)


def check_writes(dsn: str) -> tuple[int, int]:
    """Rows in the tracked table and their row-change events; the untracked table
    must have none. Raises when they differ."""
    counts = (
        "SELECT (SELECT count(*) FROM tenant_tracked.item),"
        " (SELECT coalesce(sum(jsonb_array_length(payload -> 'rows')), 0) FROM tenancy.events"
        "   WHERE name = 'rows_changed' AND tenant_slug = 'tracked'),"
        " (SELECT count(*) FROM tenancy.events"
        "   WHERE name = 'rows_changed' AND tenant_slug = 'untracked')"
    )
    with psycopg.connect(dsn) as conn:
        row = conn.execute(counts).fetchone()
    if row is None or row[0] != row[1] or row[2] != 0:
        raise RuntimeError(f"tracked rows / their events / untracked events: {row}")
    return int(row[0]), int(row[1])


def bench_writes(
    dsn: str, inserts: dict[str, sql.Composed], seconds: float, rounds: int
) -> dict[str, list[float]]:
    """Per-round rows/s of each side. In a round the sides take turns of about
    WRITE_TURN seconds until each has run for ``seconds``, and which side goes
    first alternates from round to round, so a burst of load from elsewhere on
    the machine falls on both sides alike."""
    ids = itertools.count(1)
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(WRITERS)]
    try:
        warm_up = min(0.5, seconds / 2)
        for slug in WRITE_SIDES:
            write_turn(conns, inserts[slug], warm_up, ids)
        turns = max(1, round(seconds / WRITE_TURN))
        out: dict[str, list[float]] = {slug: [] for slug in WRITE_SIDES}
        for r in range(rounds):
            order = list(WRITE_SIDES) if r % 2 == 0 else list(reversed(WRITE_SIDES))
            rows = dict.fromkeys(WRITE_SIDES, 0)
            taken = dict.fromkeys(WRITE_SIDES, 0.0)
            for _ in range(turns):
                for slug in order:
                    count, elapsed = write_turn(conns, inserts[slug], seconds / turns, ids)
                    rows[slug] += count
                    taken[slug] += elapsed
            for slug in WRITE_SIDES:
                out[slug].append(rows[slug] / taken[slug])
            done = ", ".join(f"{slug} {x[-1]:.0f}" for slug, x in out.items())
            log(f"  round {r + 1}/{rounds} (rows/s): {done}")
        return out
    finally:
        for conn in conns:
            conn.close()


# Run ---------------------------------------------------------------------------


def run(
    events: int,
    seconds: float,
    rounds: int,
    latency_rate: float,
    latency_seconds: float,
    outbox_events: int,
) -> Results:
    """Set up a server and a fresh database, run the three benchmarks."""
    started = time.perf_counter()
    with bench_database() as db:
        dsn = db.dsn
        log(f"PostgreSQL {db.server_version}; database ready")
        tenancy = Tenancy(dsn)
        try:
            tenancy.create_tenant(TENANT)
            inserts = prepare_tables(tenancy)
            log(f"outbox: topping up to {outbox_events} events")
            outbox = fill_outbox(dsn, outbox_events)
            log(
                f"latency: {latency_rate:g} events/s for {latency_seconds:g} s per side, "
                f"{outbox} events in the outbox"
            )
            latency = bench_latency(dsn, latency_rate, latency_seconds)
            log(f"delivery: {events} events, {rounds} rounds, rotating")
            delivery = bench_delivery(dsn, events, rounds)
            log(f"writes: {WRITERS} writers, {rounds} rounds x {seconds:g} s per side")
            writes = bench_writes(dsn, inserts, seconds, rounds)
            tracked_rows, tracked_events = check_writes(dsn)
        finally:
            tenancy.engine.dispose()
    rates = {
        label: statistics.median(events / d.seconds for d in ds) for label, ds in delivery.items()
    }
    notify_rate = rates.pop("notify")
    first_ms = {
        label: statistics.median(d.first_seconds * 1000 for d in ds)
        for label, ds in delivery.items()
        if label != "notify"
    }
    best = max(BATCH_SIZES, key=lambda size: rates[f"batch{size}"])
    ours, base = latency["listener"], latency["notify"]
    tracked = statistics.median(writes["tracked"])
    untracked = statistics.median(writes["untracked"])
    return Results(
        server_version=db.server_version,
        server_source=db.server_source,
        seconds_per_round=seconds,
        rounds=rounds,
        events=events,
        notify_chunk=NOTIFY_CHUNK,
        listener_events_per_s={k: round(v, 1) for k, v in rates.items()},
        notify_events_per_s=round(notify_rate, 1),
        delivery_ratio={k: round(v / notify_rate, 3) for k, v in rates.items()},
        best_batch_size=best,
        listener_first_event_ms={k: round(v, 1) for k, v in first_ms.items()},
        delivery_rounds={
            label: [round(events / d.seconds, 1) for d in ds] for label, ds in delivery.items()
        },
        latency_rate=latency_rate,
        latency_seconds=latency_seconds,
        latency_samples=len(ours.from_commit),
        latency_outbox_events=outbox,
        listener_offered_per_s=round(ours.offered_per_s, 1),
        notify_offered_per_s=round(base.offered_per_s, 1),
        listener_p50_ms=round(statistics.median(ours.from_commit), 3),
        listener_p99_ms=round(percentile(ours.from_commit, 99), 3),
        listener_max_ms=round(max(ours.from_commit), 3),
        notify_p50_ms=round(statistics.median(base.from_commit), 3),
        notify_p99_ms=round(percentile(base.from_commit, 99), 3),
        notify_max_ms=round(max(base.from_commit), 3),
        listener_from_send_p50_ms=round(statistics.median(ours.from_send), 3),
        listener_from_send_p99_ms=round(percentile(ours.from_send, 99), 3),
        notify_from_send_p50_ms=round(statistics.median(base.from_send), 3),
        notify_from_send_p99_ms=round(percentile(base.from_send, 99), 3),
        writers=WRITERS,
        tracked_rows_per_s=round(tracked, 1),
        untracked_rows_per_s=round(untracked, 1),
        write_ratio=round(tracked / untracked, 3),
        write_rounds={k: [round(x, 1) for x in xs] for k, xs in writes.items()},
        tracked_rows=tracked_rows,
        tracked_events=tracked_events,
        elapsed_seconds=round(time.perf_counter() - started, 1),
    )


def verdict(met: bool) -> str:
    """How a goal came out."""
    return "met" if met else "MISSED"


def report(r: Results) -> str:
    """The results as a short header, a three-column table, latencies and goals."""
    w = 44
    best = f"batch{r.best_batch_size}"
    best_rate = r.listener_events_per_s[best]
    rows = [
        TableRow(
            f"Listener batch_size={size} events/s",
            r.listener_events_per_s[f"batch{size}"],
            "raw LISTEN/NOTIFY events/s",
            r.notify_events_per_s,
            r.delivery_ratio[f"batch{size}"],
        )
        for size in BATCH_SIZES
    ]
    rows.append(
        TableRow(
            "tracked item rows/s",
            r.tracked_rows_per_s,
            "untracked item rows/s",
            r.untracked_rows_per_s,
            r.write_ratio,
        )
    )
    lines = [
        report_title("events", r),
        f"delivery: {r.events} pre-produced tenant_resumed events to a signal receiver, from the "
        f"listener thread's start; baseline: {r.events} pg_notify, {r.notify_chunk} per "
        f"transaction, from the first send; {r.rounds} rounds rotating, medians",
        f"latency: one event per autocommit transaction at {r.latency_rate:g}/s offered, "
        f"{r.latency_samples} events per side after a {LATENCY_WARM_UP:g} s warm-up, "
        f"from commit done to receipt; {r.latency_outbox_events} events in the outbox",
        f"writes: {r.writers} threads, one-row INSERT per autocommit transaction, "
        f"{r.rounds} rounds x {r.seconds_per_round:g} s per side, alternating, medians",
        f"total run time {r.elapsed_seconds:g} s",
        "",
        *ratio_table(w, rows),
        "",
        "ratio = pgtenancy / baseline (1.00: no overhead; 0.80: 80% of the baseline's rate)",
        "",
        f"{'latency at ' + format(r.latency_rate, 'g') + ' events/s':<{w}} "
        "|    p50 ms |    p99 ms |    max ms",
        f"{'-' * w}-+-----------+-----------+----------",
        f"{'Listener (tenant_resumed signal)':<{w}} | {r.listener_p50_ms:>9.2f} | "
        f"{r.listener_p99_ms:>9.2f} | {r.listener_max_ms:>9.2f}",
        f"{'raw LISTEN/NOTIFY (baseline)':<{w}} | {r.notify_p50_ms:>9.2f} | "
        f"{r.notify_p99_ms:>9.2f} | {r.notify_max_ms:>9.2f}",
        "",
        "goals:",
        f"  delivery >= {GOAL_EVENTS_PER_S:,.0f} events/s: "
        f"{verdict(best_rate >= GOAL_EVENTS_PER_S)} "
        f"({best_rate:,.0f} with batch_size={r.best_batch_size}, the better)",
        f"  latency p50 < {GOAL_P50_MS:g} ms: {verdict(r.listener_p50_ms < GOAL_P50_MS)}, "
        f"p99 < {GOAL_P99_MS:g} ms: {verdict(r.listener_p99_ms < GOAL_P99_MS)}",
        f"  tracked writes >= {GOAL_WRITE_RATIO:g} x untracked: "
        f"{verdict(r.write_ratio >= GOAL_WRITE_RATIO)} ({r.write_ratio:.2f})",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, run, print the table (or JSON)."""
    parser = bench_parser("events")
    add_round_options(parser, "delivery and write")
    parser.add_argument(
        "--events",
        type=positive_int,
        default=20000,
        help="events delivered per side and round (default: 20000)",
    )
    parser.add_argument(
        "--latency-rate",
        type=positive_float,
        default=500.0,
        help="events per second offered in the latency test (default: 500)",
    )
    parser.add_argument(
        "--latency-seconds",
        type=positive_float,
        default=5.0,
        help="seconds of the latency test per side, after a 0.5 s warm-up (default: 5)",
    )
    parser.add_argument(
        "--outbox-events",
        type=non_negative_int,
        default=100000,
        help="events in the outbox before the latency test, topped up with old events "
        "(default: 100000)",
    )
    add_json_option(parser)
    args = parser.parse_args(argv)
    results = run(
        args.events,
        args.seconds,
        args.rounds,
        args.latency_rate,
        args.latency_seconds,
        args.outbox_events,
    )
    print_results(results, report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
