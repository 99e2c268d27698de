"""Personalised arms (issue 16): finetune, fedbn, ditto, perhead.

The privacy claim is checked on the wire: a grid records every array of every message
(server -> site and site -> server) and the site-local weights must not be among them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfed.config import RUN_EXPERIMENT, RUN_ID, RUN_LEDGER_DIR
from medfed.errors import MedFedError
from medfed.federation import personalize
from medfed.federation.client_app import app as client_app
from medfed.federation.rounds import RoundHooks, run_federation
from medfed.models import for_experiment
from medfed.simulation.engine import InProcessGrid
from tests.conftest import small_config


def test_personalize_accepts_names_none_and_a_comma_list():
    assert small_config(personalize="none").personalize == []
    assert small_config(personalize="ditto").personalize == ["ditto"]
    assert small_config(personalize="finetune,ditto").personalize == ["finetune", "ditto"]
    assert small_config(personalize=None).personalize == []
    with pytest.raises(MedFedError, match="perhead"):
        small_config(personalize=["dito"])


class RecordingGrid(InProcessGrid):
    """Records a copy of every array of every message, both ways."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[dict[str, np.ndarray]] = []
        self.replies: list[dict[str, np.ndarray]] = []

    def _deliver(self, message):
        self.sent.append(arrays_of(message))
        reply = super()._deliver(message)
        if message.metadata.message_type.startswith("train"):
            self.replies.append(arrays_of(reply))
        else:
            self.sent.append(arrays_of(reply))  # evaluate/query replies: checked for values
        return reply


def arrays_of(message) -> dict[str, np.ndarray]:
    if message.has_error():
        return {}
    return {f"{name}/{key}": array.numpy().copy()
            for name, record in message.content.array_records.items()
            for key, array in record.items()}


def federate(cfg, tmp_path, arm: str = "") -> RecordingGrid:
    run_config = {RUN_EXPERIMENT: cfg.to_json(), RUN_ID: "t", RUN_LEDGER_DIR: str(tmp_path / "l"),
                  personalize.RUN_PERSONAL_DIR: str(tmp_path / "p"),
                  personalize.RUN_PERSONAL_ARM: arm}
    grid = RecordingGrid(client_app, cfg.partition.sites, run_config)
    run_federation(grid, cfg, RoundHooks(seed=cfg.seed))
    return grid


def stored(tmp_path, cfg, arm: str) -> dict[str, dict[str, torch.Tensor]]:
    from medfed.datasets.sites import simulated_federation

    sites, _ = simulated_federation(cfg.to_json())
    out = {s.name: personalize.personal_state(tmp_path / "p", "t", s.name, arm) for s in sites}
    assert all(state for state in out.values()), f"{arm}: a site stored no personal weights"
    return out


def assert_never_sent(grid: RecordingGrid, local: dict[str, dict[str, torch.Tensor]],
                      keys: set[str] | None) -> None:
    """No reply holds a site-local key; no message (either way) holds a site-local value."""
    assert grid.replies
    if keys is not None:
        for reply in grid.replies:
            assert reply, "a site replied to training with no arrays"
            assert not {k.split("/", 1)[1] for k in reply} & keys
    everything = [a for msg in grid.sent + grid.replies for a in msg.values()]
    for state in local.values():
        for value in state.values():
            value = value.numpy()
            if value.size < 2 or not np.issubdtype(value.dtype, np.floating):
                continue  # e.g. BatchNorm's step counter: the same at every site
            assert not any(a.shape == value.shape and np.array_equal(a, value)
                           for a in everything)


@pytest.fixture
def images(tmp_path, monkeypatch):
    """A BreastMNIST-shaped file (28x28 gray, 2 classes, a bright blob in class 1)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in {"train": 120, "val": 10, "test": 60}.items():
        labels = rng.integers(0, 2, n)
        images = rng.integers(0, 120, (n, 28, 28)).astype(np.uint8)
        images[labels == 1, 10:18, 10:18] += 100
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels[:, None]
    (tmp_path / "medmnist").mkdir()
    np.savez(tmp_path / "medmnist" / "breastmnist.npz", **arrays)
    monkeypatch.setenv("MEDFED_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MEDFED_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def image_config(**overrides):
    return small_config(dataset={"name": "medmnist", "options": {"name": "breastmnist"}},
                        model={"name": "small_cnn", "channels": [4, 8], "norm": "batch"},
                        partition={"scheme": "iid", "sites": 3}, rounds=2, **overrides)


def test_fedbn_norm_layers_never_leave_the_site(images, tmp_path):
    cfg = image_config(personalize=["fedbn"])
    grid = federate(cfg, tmp_path, "fedbn")
    keys = personalize.norm_keys(for_experiment(cfg, _info(cfg)))
    assert any("running_mean" in k for k in keys)
    local = stored(tmp_path, cfg, "fedbn")
    assert all(set(state) == keys for state in local.values())
    assert_never_sent(grid, local, keys)
    # each site's statistics are its own
    names = list(local)
    mean_key = next(k for k in keys if k.endswith("running_mean"))
    assert not torch.equal(local[names[0]][mean_key], local[names[1]][mean_key])


def test_perhead_and_ditto_keep_their_weights_on_the_site(tmp_path):
    cfg = small_config(model={"name": "mlp", "hidden": [8]}, personalize=["perhead"])
    grid = federate(cfg, tmp_path, "perhead")
    keys = personalize.head_keys(for_experiment(cfg, _info(cfg)))
    assert keys and all(k.split(".")[-1] in ("weight", "bias") for k in keys)
    assert_never_sent(grid, stored(tmp_path, cfg, "perhead"), keys)

    cfg = small_config(model={"name": "mlp", "hidden": [8]}, personalize=["ditto"])
    grid = federate(cfg, tmp_path)
    local = stored(tmp_path, cfg, "ditto")
    sent_keys = {k.split("/", 1)[1] for k in grid.replies[-1]}
    assert set(next(iter(local.values()))) <= sent_keys  # the same model, other values
    assert_never_sent(grid, local, None)


def _info(cfg):
    from medfed.datasets.sites import simulated_federation

    return simulated_federation(cfg.to_json())[1]


def test_every_arm_is_scored_per_site_like_federated(tmp_path):
    from medfed.simulation.runner import run_simulation

    cfg = small_config(model={"name": "mlp", "hidden": [8]}, rounds=2,
                       personalize=["finetune", "ditto", "perhead"],
                       personalization={"finetune": {"steps": 7}},
                       baselines={"centralized": False, "local_only": True})
    report = run_simulation(cfg).report
    metrics = report["metrics"]
    fed = metrics["federated"]
    for arm in ("finetune", "ditto", "perhead"):
        assert set(metrics[arm]["per_site"]) == set(fed["per_site"])
        assert set(metrics[arm]["pooled"]) == set(fed["pooled"])
        assert metrics[arm]["per_site"] != fed["per_site"], f"{arm} is FedAvg again"
    assert set(metrics["finetune"]["steps"].values()) == {7}
    assert "| site | federated | finetune | ditto | perhead | local-only |" in \
        _markdown(report)


def _markdown(report) -> str:
    from medfed.reports.report import markdown

    return markdown(report)


def test_dp_sgd_ledger_counts_personal_steps(tmp_path):
    from medfed.privacy.ledger import open_folder
    from medfed.simulation.runner import run_simulation

    ledgers = tmp_path / "ledgers"
    cfg = small_config(model={"name": "mlp", "hidden": [8]}, rounds=2,
                       personalize=["ditto", "finetune"],
                       personalization={"finetune": {"epochs": 1}},
                       baselines={"centralized": False, "local_only": False},
                       privacy={"mode": "dp-sgd", "epsilon": 50.0, "noise_multiplier": 1.0,
                                "ledger_dir": str(ledgers)})
    report = run_simulation(cfg).report
    assert "ditto" in report["metrics"] and "finetune" in report["metrics"]
    for site, ledger in open_folder(ledgers).items():
        by_kind: dict[str, int] = {}
        for spend in ledger.spends:
            kind = spend.run_id.split("/")[1] if "/" in spend.run_id else "global"
            by_kind[kind] = by_kind.get(kind, 0) + spend.steps
        assert set(by_kind) == {"global", "personal", "finetune"}, site
        assert by_kind["personal"] == by_kind["global"]  # one personal epoch per global one
        assert by_kind["finetune"] == by_kind["global"] // 2  # one epoch after two rounds


def test_site_audit_log_lists_what_stayed_on_site(tmp_path):
    """A real site's audit log: the kept weights (files, hashes, names) beside what was sent."""
    import json

    from flwr.app import Context, Message, RecordDict

    from medfed.deploy.personal_mod import kept_on_site_mod

    log = tmp_path / "audit.log"
    context = Context(run_id=1, node_id=5, node_config={"audit-log": str(log),
                                                         "privacy-ledger-dir": str(tmp_path)},
                      state=RecordDict(), run_config={RUN_ID: "r1"})
    cfg = small_config(model={"name": "mlp", "hidden": [8]}, personalize=["perhead"])
    model = for_experiment(cfg, _info(cfg))

    def handler(msg, ctx):
        sent = personalize.shared_state(model.state_dict(), model, cfg, ctx, "site-1")
        assert not set(sent) & personalize.head_keys(model)
        return msg

    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0  # as the grid
    msg = Message(RecordDict(), dst_node_id=5, message_type="train")
    kept_on_site_mod(msg, context, handler)
    entry = [json.loads(line) for line in log.read_text().splitlines()
             if "kept_on_site" in line][-1]
    (path,) = entry["kept"]["files"]
    assert path.startswith(str(tmp_path / "personal"))  # beside the site's ledger
    assert set(entry["kept"]["keys"][0].split(",")) == personalize.head_keys(model)
