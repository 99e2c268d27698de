"""The audit log's signed head: `medfed audit verify` tells truncation, deletion, reordering,
editing and a rewritten chain apart, and accepts an unsigned tail after a crash.

The first tests need no processes; the last ones (``deploy`` marker) read the logs of a real
federation on loopback (tests/deploy_scenario.py): run id and round on every entry across
a resume, tampering with those real logs, a refused join logged at the coordinator.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medfed.deploy import audit
from tests.conftest import run_cli


def _log(folder: Path, n: int = 8) -> Path:
    log = folder / "audit.jsonl"
    for rnd in range(1, n + 1):
        audit.append(log, "round_finished", run_id="run-1", round=rnd)
    return log


def _rewrite(log: Path, lines: list[str]) -> None:
    log.write_text("\n".join(lines) + "\n")


def _relinked(lines: list[str]) -> list[str]:
    """The lines with seq, prev and hash recomputed (what a careful forger does)."""
    out, prev = [], audit.GENESIS
    for seq, line in enumerate(lines, start=1):
        entry = json.loads(line)
        entry.update(seq=seq, prev=prev)
        entry["hash"] = audit._digest(entry)
        prev = entry["hash"]
        out.append(json.dumps(entry, sort_keys=True))
    return out


def _verify(log: Path, monkeypatch, capsys, *extra: str) -> tuple[int, str]:
    code, out, err = run_cli(["audit", "verify", str(log), *extra], monkeypatch, capsys)
    assert "Traceback" not in err
    return code, out + err


def test_intact_log_is_signed_after_every_append(tmp_path, monkeypatch, capsys):
    log = _log(tmp_path)
    head = json.loads(audit.head_path(log).read_text())
    assert head["signed"]["entries"] == 8
    assert head["signed"]["last_hash"] == audit.entries(log)[-1]["hash"]
    found = audit.check_log(log)
    assert (found.entries, found.signed, found.unsigned_tail) == (8, 8, 0)
    assert found.pinned == str(tmp_path / audit.AUDIT_PUB)
    code, out = _verify(log, monkeypatch, capsys)
    assert code == 0 and "OK, 8 entries" in out and "unsigned" not in out


@pytest.mark.parametrize(("damage", "where", "words"), [
    ("truncate", "audit.jsonl", "truncated"),
    ("truncate-two", "audit.jsonl", "its last 2 entries were deleted"),
    ("delete", "line 4", "entry 4 deleted"),
    ("delete-relinked", "audit.jsonl", "truncated"),
    ("edit", "line 3", "edited after it was written (hash mismatch)"),
    ("edit-rehashed", "line 3", "its hash was recomputed"),
    ("reorder", "line 2", "reordered"),
    ("rewrite", "audit.jsonl", "rewritten"),
])
def test_tampering_is_named(tmp_path, monkeypatch, capsys, damage, where, words):
    log = _log(tmp_path)
    lines = log.read_text().splitlines()
    edited = json.loads(lines[2])
    edited["round"] = 30
    rehashed = dict(edited, hash=audit._digest(edited))
    _rewrite(log, {
        "truncate": lines[:-1],
        "truncate-two": lines[:-2],
        "delete": lines[:3] + lines[4:],
        "delete-relinked": _relinked(lines[:3] + lines[4:]),
        "edit": lines[:2] + [json.dumps(edited, sort_keys=True)] + lines[3:],
        "edit-rehashed": lines[:2] + [json.dumps(rehashed, sort_keys=True)] + lines[3:],
        "reorder": [lines[0], lines[2], lines[1], *lines[3:]],
        "rewrite": _relinked(lines[:2] + [json.dumps(edited, sort_keys=True)] + lines[3:]),
    }[damage])
    code, out = _verify(log, monkeypatch, capsys)
    assert code == 2, out
    assert out.startswith("error: ") and words in out and where in out


def test_unsigned_tail_after_a_crash_is_not_tampering(tmp_path, monkeypatch, capsys):
    log = _log(tmp_path, 5)
    # a crash between two appends and their head: entries after the signed head
    audit.append(log, "round_started", run_id="run-1", round=6, seal=False)
    audit.append(log, "round_finished", run_id="run-1", round=6, seal=False)
    code, out = _verify(log, monkeypatch, capsys)
    assert code == 0
    assert "signed head covers 5" in out and "unsigned tail, 2 entries" in out
    _rewrite(log, log.read_text().splitlines()[:4])  # below the signed head: truncation
    code, out = _verify(log, monkeypatch, capsys)
    assert code == 2 and "truncated" in out


def test_head_missing_forged_or_edited(tmp_path, monkeypatch, capsys):
    log = _log(tmp_path, 4)
    head = audit.head_path(log)
    saved = head.read_bytes()
    head.unlink()
    code, out = _verify(log, monkeypatch, capsys)
    assert code == 2 and "no signed head" in out
    code, out = _verify(log, monkeypatch, capsys, "--chain-only")
    assert code == 0 and "chain intact, 4 entries" in out
    # a forger truncates, then signs a new head with a key of their own
    _rewrite(log, log.read_text().splitlines()[:3])
    forged = tmp_path / "forger"
    forged.mkdir()
    shutil.copy(log, forged / "audit.jsonl")
    audit.append(forged / "audit.jsonl", "cover_up")
    _rewrite(log, (forged / "audit.jsonl").read_text().splitlines())
    shutil.copy(audit.head_path(forged / "audit.jsonl"), head)
    code, out = _verify(log, monkeypatch, capsys)
    assert code == 2 and "not by audit-signing.pub" in out
    # the head's numbers edited by hand: its signature no longer matches
    document = json.loads(saved)
    document["signed"]["entries"] = 3
    head.write_text(json.dumps(document))
    code, out = _verify(log, monkeypatch, capsys)
    assert code == 2 and "signature is invalid" in out


def test_coordinator_log_is_signed_with_the_coordinator_key(tmp_path, monkeypatch, capsys):
    from medfed.deploy.signing import ensure_signing_key, key_id

    key = ensure_signing_key(tmp_path)  # what `medfed server start` creates
    log = _log(tmp_path, 2)
    assert audit.check_log(log).key_id == key_id(key.public_key())
    assert not (tmp_path / audit.AUDIT_KEY).exists()
    other = tmp_path / "other"
    ensure_signing_key(other)
    code, out = _verify(log, monkeypatch, capsys, "--key", str(other / "coordinator.pub"))
    assert code == 2 and "not by coordinator.pub" in out


def test_message_round_and_site_fields():
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from medfed.config import RUN_ID

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 9, 1, 0  # as the engine
    msg = Message(RecordDict({"config": ConfigRecord({"server-round": 4})}), dst_node_id=1,
                  message_type="train")
    assert audit.message_round(msg) == 4
    msg.metadata.group_id = "7"
    assert audit.message_round(msg) == 7
    summary = Message(RecordDict({"config": ConfigRecord()}), dst_node_id=1,
                      message_type="query.site_summary")
    assert audit.message_round(summary) == 0
    fields = audit.message_fields(msg, {RUN_ID: "hd-20260101"})
    assert fields["run_id"] == "hd-20260101" and fields["round"] == 7


# --- a real federation on loopback (tests/deploy_scenario.py) ------------------------------


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    from tests.deploy_scenario import run_once

    return run_once(tmp_path_factory.getbasetemp())


def _run_entries(log: Path, run_id: str) -> list[dict]:
    return [e for e in audit.entries(log) if e.get("run_id") == run_id]


@pytest.mark.deploy
def test_every_entry_carries_the_run_id_and_round_across_a_resume(fed):
    mine = _run_entries(fed.state / "audit.jsonl", fed.run_id)
    events = [e["event"] for e in mine]
    assert "run_started" in events and "run_resumed" in events, fed.log
    assert all(isinstance(e["round"], int) for e in mine), [e for e in mine
                                                            if not isinstance(e["round"], int)]
    started = [e["round"] for e in mine if e["event"] == "round_started"]
    assert sorted(set(started)) == [1, 2, 3]
    assert [e["round"] for e in mine if e["event"] == "round_finished"] == [1, 2, 3]
    resumed = next(e for e in mine if e["event"] == "run_resumed")
    assert resumed["round"] in (1, 2) and resumed["from_round"] == resumed["round"] + 1
    for site in ("a", "b"):
        sent = [e for e in audit.entries(fed.site_log(site))
                if e["event"] == "sent_to_coordinator"]
        trained = [e for e in sent if e["message_type"] == "train"]
        assert {e["run_id"] for e in sent} == {fed.run_id}  # the coordinator's, not Flower's
        assert len({e["flower_run_id"] for e in sent}) == 2  # two Flower runs: the resume
        assert {e["round"] for e in trained} == {1, 2, 3}
        assert {e["round"] for e in sent if e["message_type"].startswith("query")} == {0}


@pytest.mark.deploy
def test_real_logs_verify_and_tampering_is_detected(fed, tmp_path):
    from medfed.errors import MedFedError

    for log in (fed.site_log("a"), fed.site_log("c")):  # c was killed: maybe an unsigned tail
        assert audit.check_log(log).entries >= 3
    done = fed.cli("audit", "verify", str(fed.state / "audit.jsonl"))
    assert done.returncode == 0, done.stderr
    assert "chain intact, head signed by key" in done.stdout and "coordinator.pub" in done.stdout
    for damage, words in (("truncate", "truncated"), ("delete", "deleted before this line"),
                          ("edit", "edited after it was written")):
        copy = tmp_path / damage
        copy.mkdir()
        for name in ("audit.jsonl", "audit.head.json", "coordinator.pub"):
            shutil.copy(fed.state / name, copy / name)
        lines = (copy / "audit.jsonl").read_text().splitlines()
        lines = {"truncate": lines[:-1], "delete": lines[:5] + lines[6:],
                 "edit": lines[:5] + [lines[5].replace('"seq": 6', '"seq": 6, "x": 1')]
                 + lines[6:]}[damage]
        (copy / "audit.jsonl").write_text("\n".join(lines) + "\n")
        with pytest.raises(MedFedError, match=words):
            audit.check_log(copy / "audit.jsonl")


@pytest.mark.deploy
def test_refused_join_is_logged_at_the_coordinator(fed):
    from medfed.deploy.supernode import key_fingerprint

    refused = [e for e in audit.entries(fed.state / "audit.jsonl")
               if e["event"] == "join_refused"]
    assert refused, fed.log
    intruder = key_fingerprint(fed.root / "keys-intruder" / "node.key")
    entry = next(e for e in refused if e["key_sha256"] == intruder)
    assert entry["site"] is None and "not registered" in entry["reason"]
    assert entry["address"].startswith("127.0.0.1:")
    registered = {e["key_sha256"] for e in json.loads((fed.state / "nodes.json").read_text())
                  .values()}
    assert intruder not in registered
