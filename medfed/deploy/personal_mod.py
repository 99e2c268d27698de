"""The site audit log's record of personal weights: what a reply did NOT carry.

With ``personalize`` (fedbn, perhead, ditto) a handler keeps some weights on the site's disk
(beside its privacy ledger). After each reply this mod appends one ``kept_on_site`` entry:
the files, their SHA-256 and the array names they hold. Beside the ``sent_to_coordinator``
entry of the same message (array names and hashes of what left), an auditor can check that
the site-local weights never left.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from medfed.deploy import audit
from medfed.deploy.flower import NODE_AUDIT_LOG
from medfed.federation.personalize import pop_kept


def kept_on_site_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    reply = call_next(msg, context)
    kept = pop_kept(context)
    path = context.node_config.get(NODE_AUDIT_LOG)
    if path and kept:
        audit.append(str(path), "kept_on_site", **audit.message_fields(msg, context.run_config),
                     kept=kept)
    return reply
