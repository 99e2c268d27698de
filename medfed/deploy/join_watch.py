"""Refused joins, recorded at the coordinator: which key tried, from where, and why.

The SuperLink runs inside `medfed server start`, and its node authentication answers a
SuperNode whose key is not registered (or whose node is already online) with Flower's API
error ``FLEET_NODE_ACTIVATION_FAILED``, logged on the ``flwr`` logger with the node's public
key; uvicorn's access log then names the caller's address for that request. Flower offers no
hook for refused activations (its Fleet event-log plugins exist only in its enterprise
edition), so ``JoinWatcher`` is a ``logging.Filter`` on those two loggers: it changes
nothing, and appends a ``join_refused`` entry (key fingerprint as in ``nodes.json``, the
hospital's name when the key is registered, address, reason) to the coordinator's audit
log. ``tests/test_deploy_audit_chain.py`` fails if a Flower release changes either record.
"""

from __future__ import annotations

import ast
import collections
import hashlib
import json
import logging
import re
import threading
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from flwr.supercore.error import ApiErrorCode

from medfed.deploy import audit

ACTIVATION_FAILED = int(ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED)
ACTIVATE_PATH = "/v1/fleet/activate-node"  # the Fleet HTTP API's activation endpoint
REFUSAL = re.compile(r"^\[(?P<rpc>[^\]]+)\]\[ApiError:(?P<code>\d+)\] Attempted to register "
                     r"SuperNode with public key: (?P<key>b'.*'), exception: (?P<why>.*)$",
                     re.DOTALL)


def key_sha256(pem: bytes) -> str | None:
    """SHA-256 of a PEM public key in OpenSSH form: the fingerprint ``nodes.json`` keeps."""
    try:
        public = serialization.load_pem_public_key(pem)
        openssh = public.public_bytes(serialization.Encoding.OpenSSH,
                                      serialization.PublicFormat.OpenSSH)
    except (ValueError, TypeError):
        return None
    return hashlib.sha256(openssh).hexdigest()


class JoinWatcher(logging.Filter):
    """Turns the SuperLink's activation refusals into audit entries (never drops a record)."""

    def __init__(self, state: Path) -> None:
        super().__init__()
        self.state = state
        self.pending: collections.deque[dict[str, Any]] = collections.deque(maxlen=64)
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if record.name == "uvicorn.access":
                self._access(record)
            else:
                self._refusal(record)
        except Exception as exc:  # noqa: BLE001 - watching must never break the SuperLink
            logging.getLogger("medfed.server").warning("join watch: %s", exc)
        return True

    def _refusal(self, record: logging.LogRecord) -> None:
        found = REFUSAL.match(record.getMessage())
        if not found or int(found["code"]) != ACTIVATION_FAILED:
            return
        refusal = {"key_sha256": key_sha256(ast.literal_eval(found["key"])),
                   "flower_reason": found["why"].strip()}
        if ACTIVATE_PATH in found["rpc"]:  # HTTP: the access log line names the caller next
            with self.lock:
                self.pending.append(refusal)
        else:  # gRPC: Flower logs no address
            self.write(refusal, None)

    def _access(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) < 5 or not str(args[2]).startswith(ACTIVATE_PATH):
            return
        if int(args[4]) < 400:
            return
        with self.lock:
            refusal = self.pending.popleft() if self.pending else None
        self.write(refusal or {"key_sha256": None, "flower_reason": f"HTTP {args[4]}"},
                   str(args[0]))

    def write(self, refusal: dict[str, Any], address: str | None) -> None:
        site = registered_name(self.state, refusal["key_sha256"])
        audit.append(self.state / "audit.jsonl", "join_refused", **active_run(self.state),
                     key_sha256=refusal["key_sha256"], site=site, address=address,
                     reason=plain_reason(refusal["flower_reason"], site),
                     flower_reason=refusal["flower_reason"][:300])


def plain_reason(flower_reason: str, site: str | None) -> str:
    if "No SuperNode found" in flower_reason:
        return "key not registered (`medfed nodes add` registers a hospital's node.pub)"
    if site is not None and "could not be activated" in flower_reason:
        return (f"key registered as {site}, whose node is already online (a second SuperNode "
                "with the same key, or its previous session still open)")
    return flower_reason[:200]


def registered_name(state: Path, fingerprint: str | None) -> str | None:
    """The registered hospital with this key fingerprint, if any."""
    path = state / "nodes.json"
    if fingerprint is None or not path.is_file():
        return None
    try:
        nodes = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return next((name for name, entry in nodes.items()
                 if isinstance(entry, dict) and entry.get("key_sha256") == fingerprint), None)


def active_run(state: Path) -> dict[str, Any]:
    """The running run's id and round in progress (both None when no run is running)."""
    running = []
    for status in (state / "runs").glob("*/status.json"):
        try:
            if json.loads(status.read_text(encoding="utf-8")).get("status") == "running":
                running.append(status.parent)
        except (OSError, ValueError):
            continue
    if not running:
        return {"run_id": None, "round": None}
    run_dir = max(running, key=lambda p: (p / "status.json").stat().st_mtime)
    try:
        history = json.loads((run_dir / "progress.json").read_text()).get("history", [])
    except (OSError, ValueError):
        history = []
    return {"run_id": run_dir.name, "round": (history[-1]["round"] if history else 0) + 1}


def watch_refused_joins(state: Path) -> JoinWatcher:
    """Install the watcher on Flower's and uvicorn's access loggers in this process."""
    watcher = JoinWatcher(state)
    logging.getLogger("flwr").addFilter(watcher)
    logging.getLogger("uvicorn.access").addFilter(watcher)
    return watcher
