"""The site's audit trail: a ClientApp mod recording what leaves the hospital in each reply.

Active when the SuperNode's node config has ``audit-log`` (set by `medfed client start`):
every reply appends one hash-chained entry (see ``medfed.deploy.audit``, which also signs the
log's head) with the message type, the coordinator's MedFed run id (stable across a resume;
Flower's own run id beside it), the round, the arrays' names, shapes, bytes and SHA-256, and
the metric names and values (counts, losses, privacy spent) — never rows or identifiers.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from medfed.deploy import audit
from medfed.deploy.flower import NODE_AUDIT_LOG


def outgoing_audit_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    reply = call_next(msg, context)
    path = context.node_config.get(NODE_AUDIT_LOG)
    if not path:
        return reply
    fields = audit.message_fields(msg, context.run_config)
    if reply.has_error():
        audit.append(str(path), "reply_error", **fields, reason=reply.error.reason[:300])
        return reply
    arrays = {name: audit.describe_arrays(rec) for name, rec in reply.content.array_records.items()}
    metrics = {name: {k: v for k, v in rec.items() if not isinstance(v, list)}
               for name, rec in reply.content.metric_records.items()}
    listed = {name: sorted(k for k, v in rec.items() if isinstance(v, list))
              for name, rec in reply.content.metric_records.items()}
    audit.append(str(path), "sent_to_coordinator", **fields, arrays=arrays, metrics=metrics,
                 aggregate_vectors=listed)
    return reply
