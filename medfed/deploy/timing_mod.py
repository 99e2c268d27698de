"""A ClientApp mod for benchmarks: how long the site's own work on each message took.

Active only when the environment variable ``MEDFED_TIMING_LOG`` names a file (set by
``bench/deployment_overhead.py`` for the hospitals it starts): one JSON line per message
with the node, the message type, when the handler started (Unix time) and its seconds.
Round wall time minus the slowest site's seconds is the coordination overhead.
"""

from __future__ import annotations

import json
import os
import time

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

TIMING_LOG = "MEDFED_TIMING_LOG"


def timing_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    path = os.environ.get(TIMING_LOG)
    if not path:
        return call_next(msg, context)
    started, clock = time.time(), time.perf_counter()
    reply = call_next(msg, context)
    line = json.dumps({"node": str(context.node_id), "type": msg.metadata.message_type,
                       "start": started, "seconds": time.perf_counter() - clock})
    with open(path, "a", encoding="utf-8") as handle:  # one short append per message
        handle.write(line + "\n")
    return reply
