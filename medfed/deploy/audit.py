"""Tamper-evident audit logs: append-only JSON lines, each chained to the previous by hash,
and a signed head that anchors the chain's end.

Every entry is ``{"seq", "time", "event", ..., "prev", "hash"}`` where ``hash`` is the
SHA-256 of the entry's canonical JSON without ``hash`` and ``prev`` is the previous entry's
hash (64 zeros for the first). Editing, removing or reordering a line breaks the chain.
A chain alone cannot show that its LAST lines were removed, so every append also signs the
log's head (entry count + last hash) with an Ed25519 key and replaces ``<log>.head.json``
(``audit.head.json``) atomically: the coordinator's ``coordinator-signing.key`` when the log
lies in its state folder, else ``audit-signing.key`` next to the log (created on first use,
mode 600; a hospital's log lies next to its node key). ``check_log`` (``medfed audit verify``)
names what happened: an entry edited, entries deleted, reordered, the log truncated or
rewritten. Entries after the signed head (a crash between an append and its head) are an
"unsigned tail", not tampering. Writers hold an exclusive lock while appending and signing,
so concurrent processes keep one chain and one head.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from medfed.errors import MedFedError
from medfed.io import atomic_write_bytes, atomic_write_json

GENESIS = "0" * 64
COORDINATOR_KEY, COORDINATOR_PUB = "coordinator-signing.key", "coordinator.pub"
AUDIT_KEY, AUDIT_PUB = "audit-signing.key", "audit-signing.pub"
TAMPERED = "treat the log as tampered with; compare it with its backup"


def _digest(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def head_path(path: str | Path) -> Path:
    """``audit.jsonl`` -> ``audit.head.json``: the signed head of the log at ``path``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.head.json")


def _scan(handle, path: Path) -> tuple[dict[str, Any] | None, int]:
    """The log's last entry and its number of entries; a damaged log is refused (appending
    would hide the damage)."""
    handle.seek(0)
    last, number, count = None, 0, 0
    try:
        for index, line in enumerate(handle, start=1):
            if line.strip():
                last, number, count = line, index, count + 1
    except UnicodeDecodeError:
        raise MedFedError("audit log is binary, not JSON lines", where=str(path),
                          fix="restore it from a backup; MedFed never appends to a damaged "
                          "log") from None
    if last is None:
        return None, 0
    entry = _entry(path, number, last)
    if not isinstance(entry.get("seq"), int):
        raise MedFedError("audit entry lacks its integer 'seq'", where=f"{path} line {number}",
                          fix="restore the log from a backup")
    return entry, count


def append(path: str | Path, event: str, *, seal: bool = True, **fields: Any) -> dict[str, Any]:
    """Append one event to the log at ``path`` (created with its parents if missing) and,
    unless ``seal`` is False, sign the new head."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            last, count = _scan(handle, path)
            entry = {"seq": (last["seq"] + 1) if last else 1,
                     "time": _now(), "event": event, **fields,
                     "prev": last["hash"] if last else GENESIS}
            entry["hash"] = _digest(entry)
            handle.seek(0, os.SEEK_END)
            handle.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            if seal:
                write_head(path, count + 1, entry, signing_key(path))
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return entry


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


# --- the signed head --------------------------------------------------------------------------


def signing_key(path: str | Path) -> Ed25519PrivateKey:
    """The key that signs the head of the log at ``path``: the coordinator's signing key when
    the log lies in its state folder, else ``audit-signing.key`` beside the log."""
    folder = Path(path).parent
    if (folder / COORDINATOR_KEY).is_file():
        return _load_private(folder / COORDINATOR_KEY)
    with open(folder / f".{AUDIT_KEY}.lock", "w") as lock:  # two logs in one folder: one key
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / AUDIT_KEY).is_file():
            return _load_private(folder / AUDIT_KEY)
        return _create_key(folder)


def _create_key(folder: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    atomic_write_bytes(folder / AUDIT_PUB, key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    atomic_write_bytes(folder / AUDIT_KEY, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (folder / AUDIT_KEY).chmod(0o600)
    return key


def _load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise MedFedError("not a PEM Ed25519 private key", where=str(path),
                          fix="restore it from a backup")
    return key


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the SHA-256 of the raw public key (as model signatures)."""
    return hashlib.sha256(_raw(public)).hexdigest()[:16]


def _canonical(signed: dict[str, Any]) -> bytes:
    return json.dumps(signed, sort_keys=True, separators=(",", ":")).encode("utf-8")


def write_head(path: Path, count: int, last: dict[str, Any], key: Ed25519PrivateKey) -> None:
    """Sign (entry count, last seq, last hash) of the log at ``path`` into its head file."""
    signed = {"log": path.name, "entries": count, "last_seq": last["seq"],
              "last_hash": last["hash"], "time": _now()}
    public = key.public_key()
    atomic_write_json(head_path(path), {
        "algorithm": "ed25519", "public_key": base64.b64encode(_raw(public)).decode(),
        "key_id": key_id(public), "signed": signed,
        "signature": base64.b64encode(key.sign(_canonical(signed))).decode()})


@dataclass(frozen=True)
class Head:
    entries: int
    last_hash: str
    time: str
    key_id: str
    public: Ed25519PublicKey


def read_head(path: Path) -> Head:
    """The signed head of the log at ``path``, its signature checked; one line per damage."""
    where, fix = str(head_path(path)), TAMPERED
    try:
        raw = json.loads(head_path(path).read_bytes().decode("utf-8"))
        signed = raw["signed"]
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(raw["public_key"],
                                                                     validate=True))
        signature = base64.b64decode(raw["signature"], validate=True)
        entries, last_hash = signed["entries"], signed["last_hash"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise MedFedError("audit head file is damaged (not the JSON MedFed signs)",
                          where=where, fix=fix) from None
    if not isinstance(entries, int) or not isinstance(last_hash, str):
        raise MedFedError("audit head file is damaged (entries/last_hash of the wrong type)",
                          where=where, fix=fix)
    try:
        public.verify(signature, _canonical(signed))
    except InvalidSignature:
        raise MedFedError("audit head signature is invalid (the head file was edited)",
                          where=where, fix=fix) from None
    return Head(entries, last_hash, str(signed.get("time", "")), key_id(public), public)


# --- reading and checking ---------------------------------------------------------------------


def _log_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise MedFedError("audit log not found", where=str(path),
                          fix="coordinators find it in the state folder (audit.jsonl), sites "
                          "next to their node key")
    try:
        return path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise MedFedError(f"audit log is binary, not JSON lines (byte offset {exc.start})",
                          where=str(path), fix="give the audit.jsonl MedFed wrote; restore it "
                          "from a backup if it was overwritten") from None


def _entry(path: Path, number: int, line: str) -> dict[str, Any]:
    where = f"{path} line {number}"
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        raise MedFedError("audit entry is not JSON", where=where,
                          fix="the log was edited; restore it from a backup") from None
    if not isinstance(entry, dict):
        raise MedFedError(f"audit entry is a JSON {type(entry).__name__}, not an object",
                          where=where, fix="the log was edited; restore it from a backup")
    if not isinstance(entry.get("hash"), str) or not isinstance(entry.get("prev"), str):
        raise MedFedError("audit entry lacks its 'prev'/'hash' chain fields", where=where,
                          fix="the log was edited or is not a MedFed audit log")
    return entry


def _numbered(path: Path) -> list[tuple[int, dict[str, Any]]]:
    return [(number, _entry(path, number, line))
            for number, line in enumerate(_log_lines(path), start=1) if line.strip()]


def _chain_break(path: Path, rows: list[tuple[int, dict[str, Any]]], index: int) -> MedFedError:
    """What a line that does not follow its predecessor means: deleted, reordered or edited
    (an edited line whose hash was recomputed), judged from the sequence numbers."""
    number, entry = rows[index]
    seq, expected = entry.get("seq"), index + 1
    where = f"{path} line {number}"
    later = {e.get("seq") for _, e in rows[index + 1:]}
    if isinstance(seq, int) and seq > expected:
        if any(s in later for s in range(expected, seq)):
            return MedFedError(f"audit entries reordered: entry {seq} stands where entry "
                               f"{expected} belongs (chain broken)", where=where, fix=TAMPERED)
        missing = f"entry {expected}" if seq == expected + 1 else f"entries {expected}-{seq - 1}"
        return MedFedError(f"audit {missing} deleted before this line (chain broken)",
                           where=where, fix=TAMPERED)
    if seq == expected and index > 0:
        return MedFedError("audit entry edited after it was written (its hash was recomputed, "
                           f"so line {number} no longer follows it)",
                           where=f"{path} line {rows[index - 1][0]}", fix=TAMPERED)
    return MedFedError("audit entry inserted or out of order (chain broken)", where=where,
                       fix=TAMPERED)


def verify_chain(path: str | Path) -> list[dict[str, Any]]:
    """Every entry after checking hashes, links and sequence numbers; raises naming the line
    and what happened to it (edited, deleted, reordered, inserted)."""
    path = Path(path)
    rows = _numbered(path)
    prev = GENESIS
    for index, (number, entry) in enumerate(rows):
        if entry["hash"] != _digest(entry):
            raise MedFedError("audit entry edited after it was written (hash mismatch)",
                              where=f"{path} line {number}", fix=TAMPERED)
        if entry["prev"] != prev:
            raise _chain_break(path, rows, index)
        if entry.get("seq") != index + 1:  # relinked after a deletion: the numbers show it
            raise _chain_break(path, rows, index)
        prev = entry["hash"]
    return [entry for _, entry in rows]


def verify_log(path: str | Path) -> int:
    """Check the whole chain (not the head); the number of entries."""
    return len(verify_chain(path))


@dataclass(frozen=True)
class LogCheck:
    """What ``check_log`` found: entries, how many the signed head covers, by which key."""

    entries: int
    signed: int
    key_id: str
    pinned: str | None  # the public key file the head's key was checked against
    signed_at: str

    @property
    def unsigned_tail(self) -> int:
        return self.entries - self.signed


def trusted_key_file(path: str | Path) -> Path | None:
    """The public key beside a log that its head must be signed with, if one is there."""
    folder = Path(path).parent
    if (folder / COORDINATOR_KEY).is_file():  # as ``signing_key`` chooses
        return folder / COORDINATOR_PUB
    # a hospital may keep the coordinator's public key beside its own log: its own key first
    for name in (AUDIT_PUB, COORDINATOR_PUB):
        if (folder / name).is_file():
            return folder / name
    return None


def check_log(path: str | Path, trusted: Path | None = None) -> LogCheck:
    """Chain and signed head: raises naming truncation, deletion, reordering or editing;
    entries after the signed head are reported as an unsigned tail. ``trusted``: a public
    key (PEM) the head must be signed with (default: the one beside the log, if any)."""
    path = Path(path)
    _log_lines(path)  # a missing or binary log: one line, before anything else
    with open(path, "rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)  # no writer between reading the log and its head
        try:
            chain = verify_chain(path)
            if not head_path(path).is_file():
                raise MedFedError("audit log has no signed head (audit.head.json missing): "
                                  "removed last lines could not be detected", where=str(path),
                                  fix="if the log predates signed heads, check the chain alone "
                                  "with --chain-only; otherwise " + TAMPERED)
            head = read_head(path)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    pinned = trusted or trusted_key_file(path)
    if pinned is not None:
        _check_signer(head, pinned)
    _check_covered(path, chain, head)
    return LogCheck(len(chain), head.entries, head.key_id,
                    str(pinned) if pinned is not None else None, head.time)


def _check_signer(head: Head, pinned: Path) -> None:
    from medfed.deploy.signing import load_public_key

    trusted = load_public_key(pinned)
    if _raw(trusted) != _raw(head.public):
        raise MedFedError(f"audit head signed by key {head.key_id}, not by {pinned.name} "
                          f"(key {key_id(trusted)}): the head was replaced",
                          where=str(pinned), fix=TAMPERED)


def _check_covered(path: Path, chain: list[dict[str, Any]], head: Head) -> None:
    if len(chain) < head.entries:
        lost = head.entries - len(chain)
        gone = "its last entry was" if lost == 1 else f"its last {lost} entries were"
        raise MedFedError(f"audit log truncated: its signed head ({head.time}) covers "
                          f"{head.entries} entries, the log has {len(chain)}; {gone} deleted "
                          "(or entries elsewhere, with the chain recomputed)",
                          where=str(path), fix=TAMPERED)
    if head.entries and chain[head.entries - 1]["hash"] != head.last_hash:
        raise MedFedError(f"audit log rewritten: entry {head.entries} differs from the one "
                          "its head signed (entries were replaced and the chain recomputed)",
                          where=str(path), fix=TAMPERED)


def entries(path: str | Path) -> list[dict[str, Any]]:
    """Every entry of a log (empty when there is none yet); raises on a damaged line."""
    path = Path(path)
    if not path.is_file():
        return []
    return [entry for _, entry in _numbered(path)]


# --- what entries say --------------------------------------------------------------------------


def message_round(msg: Any) -> int:
    """The round a Flower message (or its reply) belongs to: its ``group_id``, set by MedFed's
    round loop, else the ``server-round`` of its config; 0 for the site summary."""
    from medfed.federation.rounds import message_round as config_round

    group = str(msg.metadata.group_id or "")
    if group.isdigit():
        return int(group)
    return config_round(msg) if msg.has_content() else 0


def message_fields(msg: Any, run_config: Any) -> dict[str, Any]:
    """What every site entry about a message carries: MedFed's run id (the coordinator's,
    stable across `--resume`), Flower's run id (new on each resume), the round and type."""
    from medfed.config import RUN_ID

    flower_run = str(msg.metadata.run_id)
    return {"run_id": str(run_config.get(RUN_ID) or f"flwr-{flower_run}"),
            "flower_run_id": flower_run, "round": message_round(msg),
            "message_type": msg.metadata.message_type}


def describe_arrays(arrays: Any) -> dict[str, Any]:
    """What left a site for an ArrayRecord: names, shapes, bytes and SHA-256 (never data)."""
    digest = hashlib.sha256()
    items, total = [], 0
    for name, array in arrays.items():
        data = bytes(array.data)
        digest.update(name.encode() + b"\0" + data)
        total += len(data)
        items.append({"name": name, "shape": list(array.shape), "dtype": array.dtype})
    return {"arrays": items, "bytes": total, "sha256": digest.hexdigest()}
