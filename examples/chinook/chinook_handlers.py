"""Receivers of the demo's listener process: print each lifecycle event as a
JSON line on stdout, for the demo to show."""

from __future__ import annotations

import json
import os
from typing import Any

from pgtenancy.events import Event, TenantRef
from pgtenancy.signals import LIFECYCLE_SIGNALS


def print_event(sender: str, tenant: TenantRef, event: Event, **kwargs: Any) -> None:
    """Print ``event`` as one JSON line: id, name, slug, status, time, listener pid."""
    print(
        json.dumps(
            {
                "id": event.id,
                "name": event.name,
                "slug": tenant.slug,
                "status": tenant.status,
                "time": event.time.isoformat(),
                "pid": os.getpid(),
            }
        ),
        flush=True,
    )


for _signal in LIFECYCLE_SIGNALS.values():
    _signal.connect(print_event, dispatch_uid="chinook_demo.print_event")
