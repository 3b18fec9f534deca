"""Operating listeners: status as JSON, a health verdict with exit codes,
JSON log lines and Prometheus metrics.

``pgtenancy events status --json``, ``pgtenancy events health`` and
``pgtenancy listen --log-format json --metrics-port N`` are built on this
module. Everything here reads ``tenancy.consumer_status()`` and
``tenancy.outbox_health()``, which ``grant_listener_role`` grants, so a
listener's own role can run the health check.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgtenancy.admin import ConsumerStatus, OutboxHealth, Tenancy
    from pgtenancy.listener import Listener

#: Exit status of ``pgtenancy events health`` per problem (the lowest wins
#: when several hold; 1 is kept for errors such as a refused connection).
HEALTH_EXIT = {
    "ok": 0,
    "lag": 2,
    "no_lease_holder": 3,
    "stalled": 4,
    "unknown_consumer": 5,
}


def status_document(tenancy: Tenancy) -> dict[str, Any]:
    """``consumer_status()`` and ``outbox_health()`` as one JSON-ready dict:
    ``{"consumers": [...], "outbox": {...}, "fixes": [...]}`` (times as ISO
    8601 strings; ``fixes``: :func:`prepared_fixes`, empty when no prepared
    transaction holds delivery back)."""
    consumers = [_jsonable(asdict(c)) for c in tenancy.consumer_status()]
    health = tenancy.outbox_health()
    return {
        "consumers": consumers,
        "outbox": _jsonable(asdict(health)),
        "fixes": prepared_fixes(health),
    }


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


@dataclass(frozen=True)
class HealthReport:
    """The verdict of :func:`check_health`.

    Attributes:
        status: ``"ok"`` or the most serious problem's name (a key of
            :data:`HEALTH_EXIT`).
        exit_code: :data:`HEALTH_EXIT` of ``status``.
        problems: one line per problem found.
    """

    status: str
    exit_code: int
    problems: tuple[str, ...]


def prepared_fixes(outbox: OutboxHealth) -> list[str]:
    """How to finish each prepared transaction among ``outbox.xid_holders``:
    ``["COMMIT PREPARED 'gid' or ROLLBACK PREPARED 'gid' (in database db)", ...]``,
    oldest first (gids quoted as SQL literals). Which of the two is right only
    the transaction's manager knows."""
    fixes = []
    for h in outbox.xid_holders:
        if h.get("kind") == "prepared":
            gid = "'" + str(h.get("holder")).replace("'", "''") + "'"
            where = h.get("database")
            fixes.append(f"COMMIT PREPARED {gid} or ROLLBACK PREPARED {gid} (in database {where})")
    return fixes


def check_health(
    consumers: Sequence[ConsumerStatus],
    outbox: OutboxHealth,
    *,
    consumer: str | None = None,
    max_lag_seconds: float = 300.0,
    max_lag_events: int | None = None,
    require_lease: bool = True,
    max_stall_seconds: float = 300.0,
) -> HealthReport:
    """Judge consumers and the outbox. Pure: give it what the database said.

    Args:
        consumers: ``Tenancy.consumer_status()``.
        outbox: ``Tenancy.outbox_health()``.
        consumer: judge only this consumer (else every registered one).
        max_lag_seconds: the oldest undelivered event may be this old (s).
        max_lag_events: at most this many undelivered events (None: no limit).
        require_lease: every judged consumer needs a lease holder (a running listener).
        max_stall_seconds: held-back events behind a transaction (open or
            prepared) older than this are a stalled fence.

    Returns:
        :class:`HealthReport`; problems ordered as found.
    """
    problems: list[tuple[str, str]] = []
    chosen = [c for c in consumers if consumer is None or c.consumer == consumer]
    if consumer is not None and not chosen:
        problems.append(("unknown_consumer", f"consumer {consumer} is not registered"))
    for c in chosen:
        if c.lag_events and c.lag_seconds > max_lag_seconds:
            problems.append(
                (
                    "lag",
                    f"consumer {c.consumer}: oldest undelivered event {c.lag_seconds:.1f}s old "
                    f"(limit {max_lag_seconds:g}s)",
                )
            )
        if max_lag_events is not None and c.lag_events > max_lag_events:
            problems.append(
                (
                    "lag",
                    f"consumer {c.consumer}: {c.lag_events} undelivered events "
                    f"(limit {max_lag_events})",
                )
            )
        if require_lease and c.lease_holder is None:
            problems.append(
                ("no_lease_holder", f"consumer {c.consumer}: no listener holds the lease")
            )
    if outbox.held_back_events and outbox.oldest_transaction_seconds > max_stall_seconds:
        holder = outbox.xid_holders[0] if outbox.xid_holders else {}
        who = (
            f"{holder.get('kind')} {holder.get('holder')} in {holder.get('database')}"
            if holder
            else "an old transaction"
        )
        problems.append(
            (
                "stalled",
                f"{outbox.held_back_events} events held back for "
                f"{outbox.oldest_transaction_seconds:.0f}s by {who}"
                + (
                    f" ({outbox.prepared_transactions} prepared transactions; fix: "
                    + "; ".join(prepared_fixes(outbox))
                    + ")"
                    if outbox.prepared_transactions
                    else ""
                ),
            )
        )
    if not problems:
        return HealthReport("ok", 0, ())
    worst = min(problems, key=lambda p: HEALTH_EXIT[p[0]])[0]
    return HealthReport(worst, HEALTH_EXIT[worst], tuple(text for _, text in problems))


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: ``ts`` (UTC ISO 8601), ``level``,
    ``logger``, ``message``, ``thread``, and ``exc`` when there is a traceback;
    ``extra=`` fields of the call are included when JSON can hold them."""

    _STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
        "message",
        "asctime",
    }

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "thread": record.threadName,
        }
        for key, value in vars(record).items():
            if key not in self._STANDARD and not key.startswith("_"):
                try:
                    json.dumps(value)
                except (TypeError, ValueError):
                    value = repr(value)
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def use_json_logs(level: int | None = None) -> None:
    """Make the root logger write :class:`JsonFormatter` lines to stderr
    (replacing its handlers)."""
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    if level is not None:
        root.setLevel(level)


class ListenerCollector:
    """Prometheus collector of a running :class:`~pgtenancy.listener.Listener`
    (needs the ``metrics`` extra, ``prometheus_client``).

    Metrics (label ``consumer``): ``pgtenancy_listener_events_delivered_total``,
    ``pgtenancy_listener_receiver_failures_total``,
    ``pgtenancy_listener_events_parked_total``, ``pgtenancy_listener_lease_held``
    (1 while this process dispatches), and from the database at each scrape
    ``pgtenancy_consumer_lag_events``, ``pgtenancy_consumer_lag_seconds``,
    ``pgtenancy_outbox_held_back_events``,
    ``pgtenancy_outbox_oldest_transaction_seconds``,
    ``pgtenancy_outbox_prepared_transactions`` and ``pgtenancy_up`` (0 when the
    database did not answer).
    """

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def collect(self) -> Iterator[Any]:
        """Yield the metric families (called by prometheus_client per scrape)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        name = self.listener.consumer
        for metric, help_text, value in (
            ("pgtenancy_listener_events_delivered", "Events delivered.", self.listener.delivered),
            (
                "pgtenancy_listener_receiver_failures",
                "Failed receiver calls.",
                self.listener.receiver_failures,
            ),
            ("pgtenancy_listener_events_parked", "Events parked.", self.listener.parked),
        ):
            counter = CounterMetricFamily(metric, help_text, labels=["consumer"])
            counter.add_metric([name], value)
            yield counter
        lease = GaugeMetricFamily(
            "pgtenancy_listener_lease_held",
            "1 while this listener dispatches.",
            labels=["consumer"],
        )
        lease.add_metric([name], 1.0 if self.listener.lease_held else 0.0)
        yield lease
        up = GaugeMetricFamily("pgtenancy_up", "1 when the database answered this scrape.")
        try:
            from pgtenancy.admin import Tenancy

            tenancy = Tenancy(self.listener.dsn)
            consumers = tenancy.consumer_status()
            outbox = tenancy.outbox_health()
        except Exception:
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        lag_events = GaugeMetricFamily(
            "pgtenancy_consumer_lag_events", "Undelivered events.", labels=["consumer"]
        )
        lag_seconds = GaugeMetricFamily(
            "pgtenancy_consumer_lag_seconds",
            "Age of the oldest undelivered event (s).",
            labels=["consumer"],
        )
        for c in consumers:
            lag_events.add_metric([c.consumer], float(c.lag_events))
            lag_seconds.add_metric([c.consumer], c.lag_seconds)
        yield lag_events
        yield lag_seconds
        for metric, help_text, number in (
            (
                "pgtenancy_outbox_held_back_events",
                "Events waiting for an older transaction.",
                outbox.held_back_events,
            ),
            (
                "pgtenancy_outbox_oldest_transaction_seconds",
                "Age of the oldest open or prepared transaction (s).",
                outbox.oldest_transaction_seconds,
            ),
            (
                "pgtenancy_outbox_prepared_transactions",
                "Prepared transactions on the server.",
                outbox.prepared_transactions,
            ),
        ):
            gauge = GaugeMetricFamily(metric, help_text)
            gauge.add_metric([], float(number))
            yield gauge


def serve_metrics(listener: Listener, port: int, addr: str = "0.0.0.0") -> threading.Thread:
    """Serve :class:`ListenerCollector` of ``listener`` on ``http://addr:port/metrics``
    from a daemon thread (prometheus_client's server). Returns the thread.

    Raises:
        ModuleNotFoundError: prometheus_client is missing (``pip install 'pgtenancy[metrics]'``).
        OSError: the port is taken.
    """
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ListenerCollector(listener))
    server, thread = start_http_server(port, addr=addr, registry=registry)
    del server
    return thread
