"""Receivers for listener tests, imported by the listener process.

Each lifecycle event is appended as one JSON line to $RECORD_FILE (flushed
before the receiver returns). $RECORD_DELAY (seconds) slows each receiver;
$FAIL_ONCE_SLUG makes the receiver raise the first time it sees that
tenant's first event (a marker file next to $RECORD_FILE remembers it).
$SLOW_SLUG and $SLOW_DELAY (seconds) slow only that tenant's events. Every
call is also logged, as it starts, to $RECORD_FILE with the suffix
``.started``, so a second delivery shows before it completes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pgtenancy.events import Event, TenantRef
from pgtenancy.signals import LIFECYCLE_SIGNALS

RECORD_FILE = Path(os.environ["RECORD_FILE"])
DELAY = float(os.environ.get("RECORD_DELAY", "0"))
FAIL_ONCE_SLUG = os.environ.get("FAIL_ONCE_SLUG")
SLOW_SLUG = os.environ.get("SLOW_SLUG")
SLOW_DELAY = float(os.environ.get("SLOW_DELAY", "0"))


def _append(path: Path, entry: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()


def record(sender: str, tenant: TenantRef, event: Event, **kwargs: Any) -> None:
    _append(RECORD_FILE.with_suffix(".started"), {"id": event.id, "pid": os.getpid()})
    if FAIL_ONCE_SLUG and tenant.slug == FAIL_ONCE_SLUG:
        marker = RECORD_FILE.with_suffix(".failed")
        if not marker.exists():
            marker.write_text(str(event.id))
            raise RuntimeError(f"failing once on event {event.id}")
    if DELAY:
        time.sleep(DELAY)
    if SLOW_SLUG and tenant.slug == SLOW_SLUG:
        time.sleep(SLOW_DELAY)
    _append(
        RECORD_FILE,
        {
            "id": event.id,
            "name": event.name,
            "slug": tenant.slug,
            "status": tenant.status,
            "pid": os.getpid(),
        },
    )


for _signal in LIFECYCLE_SIGNALS.values():
    _signal.connect(record, weak=False, dispatch_uid="tests.record")
