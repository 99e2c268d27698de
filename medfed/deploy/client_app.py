"""A hospital's Flower ClientApp in a real federation (the app `medfed client start` serves).

MedFed's ClientApp (``medfed.federation.client_app``) behind the site policy mod (every
message is checked against ``site-policy.yaml`` before any data is read) and the site audit
log mod: every reply that leaves the hospital is recorded in the SuperNode's ``audit-log``.
"""

from __future__ import annotations

from medfed.deploy.audit_mod import outgoing_audit_mod
from medfed.deploy.personal_mod import kept_on_site_mod
from medfed.deploy.policy_mod import policy_mod
from medfed.deploy.timing_mod import timing_mod
from medfed.federation.client_app import build_app

# the policy first: an experiment the site refuses never reaches a handler (or its data)
# kept_on_site: the personal weights this reply did not carry (personalize)
app = build_app(mods=[policy_mod, outgoing_audit_mod, kept_on_site_mod, timing_mod])
