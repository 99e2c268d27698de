"""The ledger is crash-consistent: an interrupted write leaves the previous ledger, a resumed
round is not counted twice, and a corrupted ledger is an error, never a silent reset."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from medfed.errors import MedFedError
from medfed.privacy import ledger as ledger_mod
from medfed.privacy.ledger import Ledger, Spend


def spend(run: str = "run-a", rnd: int = 1, steps: int = 5) -> Spend:
    return Spend(run_id=run, round=rnd, steps=steps, sample_rate=0.2, noise_multiplier=1.5,
                 max_grad_norm=1.0, epsilon_after=0.5 * rnd, delta=1e-5, accountant="rdp")


def test_crash_mid_write_leaves_previous_ledger(tmp_path, monkeypatch):
    led = Ledger.open(tmp_path, "site-1")
    led.record(spend(rnd=1))
    before = (tmp_path / "site-1.json").read_bytes()

    def crash(src, dst):  # the process dies after the temp file is written, before rename
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        led.record(spend(rnd=2))
    monkeypatch.undo()
    assert (tmp_path / "site-1.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["site-1.json"]  # no temp file left
    again = Ledger.open(tmp_path, "site-1")
    assert [s.round for s in again.spends] == [1]
    # resuming: the round is recorded once, however often it is retried
    assert again.record(spend(rnd=2)) and not again.record(spend(rnd=2))
    assert [s.round for s in Ledger.open(tmp_path, "site-1").spends] == [1, 2]


def test_leftover_temp_file_from_a_hard_kill_is_ignored(tmp_path):
    Ledger.open(tmp_path, "site-1").record(spend())
    (tmp_path / ".site-1.json.abc.tmp").write_text('{"half": ')
    assert len(Ledger.open(tmp_path, "site-1").spends) == 1


@pytest.mark.parametrize("damage", ["truncate", "edit", "garbage"])
def test_corrupted_ledger_is_an_error_and_is_not_reset(tmp_path, damage):
    Ledger.open(tmp_path, "site-1").record(spend())
    path = tmp_path / "site-1.json"
    text = path.read_text()
    if damage == "truncate":
        text = text[: len(text) // 2]
    elif damage == "edit":  # someone lowers the noise by hand: the checksum no longer holds
        data = json.loads(text)
        data["spends"][0]["steps"] = 1
        text = json.dumps(data)
    else:
        text = "not json at all"
    path.write_text(text)
    with pytest.raises(MedFedError) as info:
        Ledger.open(tmp_path, "site-1")
    assert "corrupted" in str(info.value) and "never resets" in str(info.value)
    assert "\n" not in str(info.value)
    assert path.read_text() == text  # untouched


def test_client_round_interrupted_during_ledger_write_then_resumed(tmp_path, monkeypatch):
    """A simulated client killed while writing its spend; the resumed round counts once."""
    from medfed.models.clinical import logreg
    from medfed.privacy.site import train_round
    from medfed.tasks import get_task
    from tests.conftest import small_config

    cfg = small_config(privacy__mode="dp-sgd", privacy__epsilon=3.0,
                       privacy__ledger_dir=str(tmp_path), rounds=4)
    context = Context(run_id=1, node_id=1000, node_config={"partition-id": 0}, state=RecordDict(),
                      run_config={"medfed-run-id": "run-x"})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)

    def one_round(rnd: int):
        return train_round(logreg(5, 1), x, y, get_task("binary"), cfg, site="site-1",
                           context=context, server_round=rnd, seed=rnd)

    one_round(1)
    real_write = ledger_mod.atomic_write_json

    def dying_write(path, obj):
        raise SystemExit("client killed")

    monkeypatch.setattr(ledger_mod, "atomic_write_json", dying_write)
    with pytest.raises(SystemExit):
        one_round(2)
    monkeypatch.setattr(ledger_mod, "atomic_write_json", real_write)
    assert [s.round for s in Ledger.open(tmp_path, "site-1").spends] == [1]
    first = one_round(2)
    again = one_round(2)  # the server re-sends round 2: same seed, same update, no new spend
    spends = Ledger.open(tmp_path, "site-1").spends
    assert [s.round for s in spends] == [1, 2]
    assert first["dp_epsilon"] == pytest.approx(again["dp_epsilon"])
    assert "medfed.privacy" in context.state  # the accountant history lives with the site too
    state = context.state["medfed.privacy"]
    assert sum(state["history-steps"]) == sum(s.steps for s in spends)
