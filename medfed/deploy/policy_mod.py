"""The site's policy check: a ClientApp mod in front of every handler (``medfed.deploy.policy``).

Active when the SuperNode's node config has ``site-policy`` (set by `medfed client start`):
every message, before any handler reads the site's data, needs an experiment signed by a
key the policy trusts and within the policy. A refusal is an error reply with code
``messages.POLICY_REFUSED`` (the coordinator shows its reason) and an ``experiment_refused``
entry in the site's audit log. ``site-policy = "none"`` (`client start --no-policy`) lets
every experiment through, and says so in the audit log.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable

from medfed.config import NODE_DATA_PATH, RUN_EXPERIMENT, ExperimentConfig
from medfed.deploy import audit, policy
from medfed.deploy.flower import NODE_AUDIT_LOG, RUN_JOB, RUN_SIGNATURE
from medfed.errors import MedFedError
from medfed.federation import messages

NODE_POLICY = "site-policy"  # node config: the policy file, or NO_POLICY
NODE_SITE_STATE = "site-state"  # node config: the site's state folder (pending, approvals)
NO_POLICY = "none"

_accepted: set[tuple[str, str]] = set()  # (Flower run, experiment) already logged as accepted


def policy_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    where = context.node_config.get(NODE_POLICY)
    if where is None:  # simulation: no site, no policy
        return call_next(msg, context)
    log = context.node_config.get(NODE_AUDIT_LOG)
    fields = audit.message_fields(msg, context.run_config)  # run id, round, message type
    try:
        accepted = check_message(context, str(where))
    except policy.Refused as exc:
        if log:
            audit.append(str(log), "experiment_refused", **fields, reason=str(exc),
                         experiment_sha256=policy.experiment_digest(
                             str(context.run_config.get(RUN_EXPERIMENT, ""))))
        return Message(error=Error(messages.POLICY_REFUSED, str(exc)), reply_to=msg)
    key = (str(msg.metadata.run_id), accepted.get("experiment_sha256", ""))
    if log and key not in _accepted:
        audit.append(str(log), "experiment_accepted", **fields, **accepted)
        _accepted.add(key)
    return call_next(msg, context)


def check_message(context: Context, where: str) -> dict[str, str]:
    """What was accepted (digest, signing key, version); raises policy.Refused."""
    experiment_json = str(context.run_config.get(RUN_EXPERIMENT, ""))
    digest = policy.experiment_digest(experiment_json)
    if where == NO_POLICY:
        return {"experiment_sha256": digest, "policy": "none (client start --no-policy)"}
    try:
        rules, trusted = policy.load_policy(where)
    except MedFedError as exc:
        raise policy.Refused(f"its site policy cannot be read ({exc})") from None
    signed = policy.verify_experiment(experiment_json,
                                      str(context.run_config.get(RUN_SIGNATURE, "")), trusted)
    cfg = policy.parsed_experiment(experiment_json)
    training = str(context.run_config.get(RUN_JOB, "train")) != "stats"
    policy.check_experiment(cfg, rules, spent_elsewhere(context, cfg), training)
    state = Path(str(context.node_config.get(NODE_SITE_STATE) or Path(where).parent))
    if rules.require_approval and not policy.is_approved(state, digest):
        policy.store_pending(state, experiment_json, signed, "awaiting approval")
        raise policy.Refused(f"experiment {digest[:12]} is not approved at this site yet "
                             "(its operator runs `medfed client approve`)")
    return {"experiment_sha256": digest, **signed}


def spent_elsewhere(context: Context, cfg: ExperimentConfig) -> float:
    """Epsilon this site's ledgers record from other runs: the larger of the site's own
    ledger folder and the one the experiment names (a run must not reset the count)."""
    from medfed.privacy.ledger import Ledger
    from medfed.privacy.site import default_ledger_dir, ledger_dir, run_id_of

    site = Path(str(context.node_config.get(NODE_DATA_PATH, "site"))).name
    run_id = run_id_of(context)
    spent = 0.0
    for folder in {ledger_dir(context, cfg), default_ledger_dir()}:
        try:
            ledger = Ledger.open(folder, site)
        except MedFedError as exc:
            raise policy.Refused(f"its privacy ledger cannot be read ({exc})") from None
        ledger.spends = [s for s in ledger.spends if not s.run_id.startswith(run_id)]
        spent = max(spent, ledger.epsilon(cfg.privacy.delta, cfg.privacy.accountant))
    return spent
