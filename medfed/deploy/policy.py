"""Hospitals approve what runs on their data: signed experiments and the site's policy.

The coordinator signs every experiment it submits (``sign_experiment``: the resolved config
JSON's SHA-256 plus the MedFed version, Ed25519 with ``coordinator-signing.key``) and sends
the signature in the run config (``experiment-signature``). Each hospital keeps a
``site-policy.yaml`` (``SitePolicy``) that its ClientApp checks on every message before any
data is read (``policy_mod``): a valid signature by a trusted key, then the experiment
against the policy (datasets, tasks, models, privacy mode, epsilon per run and in total
against the site's ledger, rounds, local epochs) and, with ``require_approval: true``, a
recorded approval (`medfed client approve`). A refusal is an error reply
(``messages.POLICY_REFUSED``) whose reason the coordinator shows, and an audit entry here.

Site state folder (the folder of ``node.key``): ``site-policy.yaml``, ``pending/`` (signed
experiments refused for want of approval, one JSON each) and ``approvals.json``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medfed import __version__
from medfed.config import ExperimentConfig, config_from_json
from medfed.deploy.signing import _raw_public, key_id, load_public_key
from medfed.errors import MedFedError
from medfed.io import atomic_write_json

POLICY_FILE = "site-policy.yaml"
PENDING_DIR = "pending"
APPROVALS_FILE = "approvals.json"
Mode = Literal["none", "dp-sgd", "central"]


# --- the coordinator's signature ------------------------------------------------------------


def _payload(experiment_json: str, version: str) -> bytes:
    signed = {"experiment_sha256": experiment_digest(experiment_json), "medfed_version": version}
    return json.dumps(signed, sort_keys=True, separators=(",", ":")).encode("utf-8")


def experiment_digest(experiment_json: str) -> str:
    """SHA-256 of the experiment's exact JSON text (the run config value the sites receive)."""
    return hashlib.sha256(experiment_json.encode("utf-8")).hexdigest()


def sign_experiment(experiment_json: str, key: Ed25519PrivateKey,
                    version: str = __version__) -> str:
    """The run config value ``experiment-signature``: a JSON document over the experiment."""
    public = key.public_key()
    return json.dumps({"algorithm": "ed25519", "key_id": key_id(public),
                       "public_key": base64.b64encode(_raw_public(public)).decode(),
                       "medfed_version": version,
                       "signature": base64.b64encode(
                           key.sign(_payload(experiment_json, version))).decode()},
                      sort_keys=True)


class Refused(Exception):
    """An experiment this site does not run; ``str()`` is the reason the coordinator shows."""


def verify_experiment(experiment_json: str, signature: str,
                      trusted: list[Ed25519PublicKey]) -> dict[str, str]:
    """``{"key_id", "medfed_version"}`` of a valid signature by a trusted key; else Refused."""
    if not signature:
        raise Refused("the experiment is not signed by the coordinator")
    try:
        doc = json.loads(signature)
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(doc["public_key"]))
        raw_signature = base64.b64decode(doc["signature"])
        version = str(doc["medfed_version"])
    except (ValueError, KeyError, TypeError):
        raise Refused("the experiment's signature is malformed") from None
    if not any(_raw_public(public) == _raw_public(t) for t in trusted):
        raise Refused(f"the experiment is signed by key {key_id(public)}, which its policy "
                      "does not trust")
    try:
        public.verify(raw_signature, _payload(experiment_json, version))
    except InvalidSignature:
        raise Refused(f"the experiment's signature (key {key_id(public)}) does not match "
                      "its config") from None
    return {"key_id": key_id(public), "medfed_version": version}


# --- the site's policy ----------------------------------------------------------------------


class PrivacyRules(BaseModel):
    model_config = ConfigDict(extra="forbid")
    modes: list[Mode] | None = None  # privacy.mode must be one of these (None: any)
    max_epsilon_per_run: float | None = Field(None, gt=0)
    max_epsilon_total: float | None = Field(None, gt=0)
    min_count: int = Field(10, ge=1)  # this site's small-cell floor; a run may only raise it


class SitePolicy(BaseModel):
    """``site-policy.yaml``; a list left out (None) allows anything of its kind."""

    model_config = ConfigDict(extra="forbid")
    trusted_keys: list[str] = Field(min_length=1)  # coordinator.pub files (relative: to here)
    datasets: list[str] | None = None
    tasks: list[str] | None = None
    models: list[str] | None = None
    privacy: PrivacyRules = Field(default_factory=PrivacyRules)
    max_rounds: int | None = Field(None, ge=1)
    max_local_epochs: int | None = Field(None, ge=1)
    require_approval: bool = False


def load_policy(path: str | Path) -> tuple[SitePolicy, list[Ed25519PublicKey]]:
    """The policy at ``path`` and its trusted keys; one clear line for any mistake."""
    path = Path(path)
    fix = f"fix {path.name}; an example is in `medfed client start --help`"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MedFedError("site policy not found", where=str(path), fix=fix) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise MedFedError(f"site policy is not YAML ({exc.__class__.__name__})",
                          where=str(path), fix=fix) from None
    try:
        policy = SitePolicy.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise MedFedError(f"site policy key {field!r}: {err['msg'].lower()}",
                          where=str(path), fix=fix) from None
    keys = [load_public_key(_beside(path, k)) for k in policy.trusted_keys]
    return policy, keys


def _beside(policy_path: Path, name: str) -> Path:
    candidate = Path(name).expanduser()
    return candidate if candidate.is_absolute() else policy_path.parent / candidate


def experiment_task(cfg: ExperimentConfig) -> str:
    from medfed.datasets import DATASETS, get_dataset

    task = cfg.dataset.options.get("task")
    if task:
        return str(task)
    return get_dataset(cfg.dataset.name).task if cfg.dataset.name in DATASETS else "?"


def check_experiment(cfg: ExperimentConfig, policy: SitePolicy, spent: float,
                     training: bool = True) -> None:
    """Raise Refused with the first rule ``cfg`` breaks; ``spent``: epsilon this site's
    ledger already records from other runs. A statistics query (``training`` False: no
    model, no rounds; its own noise and floor, `medfed stats`) is checked for its dataset."""
    _allowed("dataset.name", cfg.dataset.name, policy.datasets)
    if not training:
        return
    _allowed("task", experiment_task(cfg), policy.tasks)
    _allowed("model.name", cfg.model.name, policy.models)
    rules = policy.privacy
    if rules.modes is not None and cfg.privacy.mode not in rules.modes:
        raise Refused(f"privacy.mode {cfg.privacy.mode}, its policy requires "
                      f"{' or '.join(rules.modes)}")
    if policy.max_rounds is not None and cfg.rounds > policy.max_rounds:
        raise Refused(f"rounds {cfg.rounds}, its policy allows at most {policy.max_rounds}")
    if policy.max_local_epochs is not None and cfg.train.local_epochs > policy.max_local_epochs:
        raise Refused(f"train.local_epochs {cfg.train.local_epochs}, its policy allows at most "
                      f"{policy.max_local_epochs}")
    _check_epsilon(cfg, rules, spent)


def _allowed(key: str, value: str, allowed: list[str] | None) -> None:
    if allowed is not None and value not in allowed:
        raise Refused(f"{key} {value}, its policy allows {', '.join(allowed) or 'none'}")


def _check_epsilon(cfg: ExperimentConfig, rules: PrivacyRules, spent: float) -> None:
    """privacy.epsilon is the total the site's ledger may reach, so a run may spend up to
    privacy.epsilon minus what earlier runs spent (central DP spends nothing at the site)."""
    if rules.max_epsilon_per_run is None and rules.max_epsilon_total is None:
        return
    mode = cfg.privacy.mode
    if mode == "none":
        raise Refused("privacy.mode none spends an unbounded epsilon, its policy caps it")
    if mode != "dp-sgd":
        return
    total, run = cfg.privacy.epsilon, max(cfg.privacy.epsilon - spent, 0.0)
    if rules.max_epsilon_total is not None and total > rules.max_epsilon_total:
        raise Refused(f"privacy.epsilon {total:g} (the total this site's ledger may reach), "
                      f"its policy allows {rules.max_epsilon_total:g} in total")
    if rules.max_epsilon_per_run is not None and run > rules.max_epsilon_per_run * (1 + 1e-9):
        raise Refused(f"this run may spend epsilon {run:.3g} (privacy.epsilon {total:g} minus "
                      f"{spent:.3g} already spent here), its policy allows "
                      f"{rules.max_epsilon_per_run:g} per run")


# --- the coordinator's side of a refusal ----------------------------------------------------

REFUSALS_FILE = "refusals.json"  # in the run folder; `medfed run` prints each new one


def site_name(state: Path, node_id: str) -> str:
    """The registered name of ``node_id`` (nodes.json), else ``node <id>``."""
    try:
        nodes = json.loads((state / "nodes.json").read_text(encoding="utf-8"))
        names = [name for name, entry in nodes.items() if str(entry.get("node_id")) == node_id]
    except (OSError, ValueError, AttributeError):
        names = []
    return names[0] if names else f"node {node_id}"


def record_refusal(audit_path: Path, run_id: str, reply: Any) -> str:
    """Log a site's policy refusal at the coordinator (audit entry, the run's refusals.json,
    once per site and reason); the line `medfed run` shows."""
    import logging

    from medfed.deploy import audit

    state = Path(audit_path).parent
    node = str(reply.metadata.src_node_id)
    line = f"site {site_name(state, node)} refused: {reply.error.reason}"
    path = state / "runs" / run_id / REFUSALS_FILE
    known = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    if any(r["node_id"] == node and r["reason"] == reply.error.reason for r in known):
        return line
    logging.getLogger("medfed.server").warning("%s", line)
    audit.append(audit_path, "site_refused", run_id=run_id, round=audit.message_round(reply),
                 node_id=node, site=site_name(state, node),
                 message_type=reply.metadata.message_type,
                 reason=reply.error.reason)
    atomic_write_json(path, [*known, {"node_id": node, "site": site_name(state, node),
                                      "reason": reply.error.reason, "line": line,
                                      "message_type": reply.metadata.message_type,
                                      "time": _now()}])
    return line


# --- approvals ------------------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def approvals(state: Path) -> list[dict[str, Any]]:
    path = state / APPROVALS_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return list(data["approved"])
    except (ValueError, KeyError, TypeError):
        raise MedFedError("approvals file is damaged", where=str(path),
                          fix="restore it from a backup (it lists what this site approved)"
                          ) from None


def is_approved(state: Path, digest: str) -> bool:
    return any(entry.get("experiment_sha256") == digest for entry in approvals(state))


def store_pending(state: Path, experiment_json: str, signature: dict[str, str],
                  reason: str) -> Path:
    """Keep a refused-for-approval experiment for `medfed client approve` (once per config)."""
    digest = experiment_digest(experiment_json)
    path = state / PENDING_DIR / f"{digest[:16]}.json"
    if not path.is_file():
        atomic_write_json(path, {"experiment_sha256": digest, "received": _now(),
                                 "reason": reason, "signature": signature,
                                 "experiment": json.loads(experiment_json),
                                 "experiment_json": experiment_json})
    return path


def pending(state: Path) -> list[dict[str, Any]]:
    """Experiments waiting for approval, oldest first (already approved ones skipped)."""
    folder = state / PENDING_DIR
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if not is_approved(state, entry.get("experiment_sha256", "")):
            found.append({**entry, "path": str(path)})
    return sorted(found, key=lambda e: e.get("received", ""))


def record_approval(state: Path, entry: dict[str, Any], who: str) -> dict[str, Any]:
    approved = {"experiment_sha256": entry["experiment_sha256"], "approved": _now(), "by": who,
                "key_id": entry.get("signature", {}).get("key_id"),
                "experiment": entry["experiment"]}
    atomic_write_json(state / APPROVALS_FILE, {"approved": [*approvals(state), approved]})
    return approved


def config_diff(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Unified diff of two experiments as indented JSON (all lines of ``new`` if no ``old``)."""
    import difflib

    new_lines = json.dumps(new, indent=2, sort_keys=True).splitlines()
    if old is None:
        return [f"+{line}" for line in new_lines]
    old_lines = json.dumps(old, indent=2, sort_keys=True).splitlines()
    return [line for line in difflib.unified_diff(old_lines, new_lines, "last approved",
                                                  "new", lineterm="", n=1)]


def parsed_experiment(experiment_json: str) -> ExperimentConfig:
    try:
        return config_from_json(experiment_json)
    except MedFedError as exc:
        raise Refused(f"its experiment config does not parse here ({exc})") from None
