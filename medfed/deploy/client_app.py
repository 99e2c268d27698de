"""A hospital's Flower ClientApp in a real federation (the app `medfed client start` serves).

MedFed's ClientApp (``medfed.federation.client_app``) behind the site audit log mod: every
reply that leaves the hospital is recorded in the SuperNode's ``audit-log``.
"""

from __future__ import annotations

from medfed.deploy.audit_mod import outgoing_audit_mod
from medfed.federation.client_app import build_app

app = build_app(mods=[outgoing_audit_mod])
