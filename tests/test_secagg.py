"""Secure aggregation (SecAgg+ on Flower's primitives) inside MedFed's round loop, in-process.

What the coordinator receives is recorded at the ``Grid``: masked vectors only, uniform over
Z_(2**62) and uncorrelated with the site's real update; the aggregate is FedAvg's within one
quantisation step; a site that drops after sharing its keys is unmasked from its shares.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, RecordDict
from scipy import stats

from medfed.config import RUN_EXPERIMENT, SECURE_STRATEGIES, ExperimentConfig
from medfed.datasets.sites import simulated_federation
from medfed.errors import MedFedError
from medfed.federation import messages
from medfed.federation.client_app import build_app
from medfed.federation.rounds import RoundHooks, run_federation
from medfed.federation.secagg import MOD_RANGE, VECTOR
from medfed.privacy import simulation as privacy_sim
from medfed.simulation.engine import SITE_NODE_BASE, InProcessGrid
from medfed.strategies import STRATEGIES
from tests.conftest import run_cli, small_config


@dataclass
class Seen:
    """One reply as it reached the coordinator (copied: the round loop reuses the object)."""

    node: int
    message_type: str
    error: bool
    arrays: dict[str, dict[str, np.ndarray]]


class RecordingGrid(InProcessGrid):
    """The in-process grid, keeping a copy of every reply the coordinator receives."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.received: list[Seen] = []

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(super().send_and_receive(messages, timeout=timeout))
        for reply in replies:
            arrays = {} if reply.has_error() else {
                name: {k: a.numpy().copy() for k, a in record.items()}
                for name, record in reply.content.array_records.items()}
            self.received.append(Seen(int(reply.metadata.src_node_id),
                                      reply.metadata.message_type, reply.has_error(), arrays))
        return replies


def drop_at_training(partition: int):
    """A site that shares its keys, then fails before answering the train message."""

    def mod(msg: Message, context, call_next) -> Message:
        if (msg.metadata.message_type == "train"
                and int(context.node_config["partition-id"]) == partition):
            return Message(error=Error(0, "site went offline"), reply_to=msg)
        return call_next(msg, context)

    return mod


def federate(cfg: ExperimentConfig, mods=(), tmp_path=None) -> tuple[ArrayRecord, list, list]:
    """(final arrays, history, every reply the coordinator received)."""
    sites, _ = simulated_federation(cfg.to_json())
    run_config = {RUN_EXPERIMENT: cfg.to_json()}
    if cfg.privacy.mode == "dp-sgd":
        run_config.update(privacy_sim.prepare(cfg, sites).run_config())
    grid = RecordingGrid(build_app(mods=list(mods)), len(sites), run_config)
    result = run_federation(grid, cfg, RoundHooks(seed=cfg.seed))
    return result.arrays, result.history, grid.received


def config(secure: str, **overrides) -> ExperimentConfig:
    return small_config(**{"rounds": 1, "strategy__secure": secure,
                           "strategy__fraction_evaluate": 0.0, "model__name": "mlp",
                           "model__hidden": [32], **overrides})


def quantum(cfg: ExperimentConfig) -> float:
    secagg = cfg.strategy.secagg
    return 2 * secagg.clipping_range / secagg.quantization_range


def assert_close(plain: ArrayRecord, secure: ArrayRecord, tolerance: float) -> None:
    assert list(plain.keys()) == list(secure.keys())
    for key in plain:
        a, b = plain[key].numpy().astype(np.float64), secure[key].numpy().astype(np.float64)
        assert np.max(np.abs(a - b)) <= tolerance + 4 * np.finfo(np.float32).eps * max(
            1.0, np.max(np.abs(a))), key


def test_config_refuses_strategies_that_need_each_update(tmp_path, monkeypatch, capsys):
    assert set(SECURE_STRATEGIES) <= set(STRATEGIES)
    refused = sorted(set(STRATEGIES) - set(SECURE_STRATEGIES))
    assert {"krum", "fedmedian", "fedtrimmedavg"} <= set(refused)
    for name in refused:
        with pytest.raises(MedFedError, match="strategy.secure"):
            small_config(strategy__name=name, strategy__secure="secagg+")
    path = tmp_path / "krum.yaml"
    path.write_text("strategy: {name: krum, secure: secagg+}\n")
    code, out, err = run_cli(["simulate", str(path), "-o", str(tmp_path / "out")],
                             monkeypatch, capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "krum" in err and not (tmp_path / "out").exists()
    with pytest.raises(MedFedError, match="privacy.clipping: client"):
        small_config(strategy__secure="secagg+", privacy__mode="central")


def test_coordinator_sees_uniform_masks_uncorrelated_with_updates():
    plain_cfg, secure_cfg = config("none"), config("secagg+")
    plain, _, plain_replies = federate(plain_cfg)
    secure, history, received = federate(secure_cfg)
    initial = plain_global_start(plain_cfg)
    updates = {seen.node: seen.arrays[messages.ARRAYS] for seen in plain_replies
               if seen.message_type == "train"}
    train_replies = [r for r in received if r.message_type == "train"]
    assert len(train_replies) == 3
    for seen in received:  # nothing but masked vectors (and key material) reached the server
        assert set(seen.arrays) <= {messages.SECAGG_MASKED}
    for seen in train_replies:
        vector = seen.arrays[messages.SECAGG_MASKED][VECTOR]
        assert vector.dtype == np.int64 and vector.min() >= 0 and vector.max() < MOD_RANGE
        uniform = stats.kstest(vector / MOD_RANGE, "uniform")
        assert uniform.pvalue > 1e-3, uniform
        trained = updates[seen.node]
        update = np.concatenate([(trained[k] - initial[k].numpy()).ravel() for k in trained])
        body = vector[len(trained) + 1:].astype(np.float64)
        assert body.size == update.size > 1000 and np.abs(update).max() > 1e-3
        assert abs(np.corrcoef(body, update)[0, 1]) < 0.15
        assert abs(stats.spearmanr(body, update).statistic) < 0.15
    assert history[0]["secure_aggregation"]["sites"] == 3
    assert_close(plain, secure, quantum(secure_cfg))


def plain_global_start(cfg: ExperimentConfig) -> ArrayRecord:
    """The round-1 global model every site started from."""
    from medfed.federation.rounds import initial_arrays, summarise_sites

    sites, _ = simulated_federation(cfg.to_json())
    grid = InProcessGrid(build_app(), len(sites), {RUN_EXPERIMENT: cfg.to_json()})
    summary = summarise_sites(grid, sorted(grid.get_node_ids()), RoundHooks(seed=cfg.seed))
    return initial_arrays(cfg, summary)


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam"])
def test_aggregate_equals_plain_within_quantisation(strategy):
    extra = {"strategy__eta": 0.05} if strategy == "fedadam" else {}
    plain_cfg = config("none", rounds=2, strategy__name=strategy, **extra)
    secure_cfg = config("secagg+", rounds=2, strategy__name=strategy, **extra)
    plain, plain_history, _ = federate(plain_cfg)
    secure, history, _ = federate(secure_cfg)
    again, _, _ = federate(secure_cfg)
    # two rounds: round 2 trains from a global model one quantum away, hence 10 quanta
    assert_close(plain, secure, 10 * quantum(secure_cfg))
    for key in secure:  # a seeded simulation reproduces bit for bit
        assert np.array_equal(secure[key].numpy(), again[key].numpy())
    assert [h["sites_trained"] for h in history] == [3, 3]
    assert history[-1]["train_loss"] == pytest.approx(plain_history[-1]["train_loss"], rel=1e-4)


@pytest.mark.parametrize(("sites", "shares", "threshold"), [(4, None, 3), (5, 3, 2)])
def test_site_dropping_after_key_sharing_is_unmasked_from_shares(sites, shares, threshold):
    """Every site sharing with every other, and SecAgg+'s sparse ring (2 neighbours each)."""
    overrides = {"partition__sites": sites}
    plain, _, _ = federate(config("none", **overrides), mods=[drop_at_training(1)])
    secure_cfg = config("secagg+", strategy__secagg={"num_shares": shares}, **overrides)
    secure, history, received = federate(secure_cfg, mods=[drop_at_training(1)])
    record = history[0]["secure_aggregation"]
    assert record["dropped_after_keys"] == [SITE_NODE_BASE + 1] and record["sites"] == sites - 1
    assert record["threshold"] == threshold and record["num_shares"] == (shares or sites)
    assert history[0]["sites_trained"] == sites - 1
    shared = [r for r in received if r.node == SITE_NODE_BASE + 1 and not r.error
              and r.message_type == messages.SECAGG_MESSAGE]
    assert len(shared) == 2  # the dropped site did send its public keys and its shares
    assert_close(plain, secure, quantum(secure_cfg))  # FedAvg over the survivors


def test_too_many_dropouts_stop_with_a_clear_error():
    cfg = config("secagg+", strategy__secagg={"reconstruction_threshold": 3})
    with pytest.raises(MedFedError, match="reconstruction threshold is 3"):
        federate(cfg, mods=[drop_at_training(2)])


def test_dp_sgd_under_secure_aggregation(tmp_path):
    common = {"privacy__mode": "dp-sgd", "privacy__epsilon": 5.0, "privacy__delta": 1e-3,
              "model__name": "logreg", "model__hidden": None}
    common = {k: v for k, v in common.items() if v is not None}
    plain_cfg = small_config(rounds=1, strategy__fraction_evaluate=0.0,
                             privacy__ledger_dir=str(tmp_path / "plain"), **common)
    secure_cfg = small_config(rounds=1, strategy__fraction_evaluate=0.0,
                              strategy__secure="secagg+",
                              privacy__ledger_dir=str(tmp_path / "secure"), **common)
    plain, _, _ = federate(plain_cfg)
    secure, history, received = federate(secure_cfg)
    assert history[0]["secure_aggregation"]["sites"] == 3
    assert not any(messages.ARRAYS in seen.arrays for seen in received)
    assert_close(plain, secure, quantum(secure_cfg))


def test_site_refuses_what_would_reveal_its_update():
    cfg = config("secagg+")
    app = build_app()
    grid = InProcessGrid(app, 3, {RUN_EXPERIMENT: cfg.to_json()})
    context = grid.contexts[SITE_NODE_BASE]
    plain_train = Message(RecordDict({messages.ARRAYS: ArrayRecord(),
                                      messages.CONFIG: ConfigRecord()}),
                          dst_node_id=SITE_NODE_BASE, message_type="train")
    reply = app(plain_train, context)
    assert reply.has_error() and reply.error.code == messages.SECAGG_REFUSED
    unmask = Message(RecordDict({messages.SECAGG: ConfigRecord({
        "stage": "unmask", messages.SERVER_ROUND: 1, "active_nids": [SITE_NODE_BASE + 1],
        "dead_nids": [SITE_NODE_BASE + 1]})}), dst_node_id=SITE_NODE_BASE,
        message_type=messages.SECAGG_MESSAGE)
    reply = app(unmask, context)  # out of order (no setup), and a node both live and dead
    assert reply.has_error() and reply.error.code == messages.SECAGG_REFUSED
    weak = Message(RecordDict({messages.SECAGG: ConfigRecord({
        "stage": "setup", messages.SERVER_ROUND: 1, "sample_num": 3, "share_num": 3,
        "threshold": 1})}), dst_node_id=SITE_NODE_BASE, message_type=messages.SECAGG_MESSAGE)
    reply = app(weak, context)  # a coordinator lowering the threshold below the config's
    assert reply.has_error() and "threshold" in reply.error.reason


def test_partial_sites_and_integer_buffers_decode_to_fedavg_partial():
    """fedavg-partial's sites send a subset of arrays (weight 0 for the rest); BatchNorm's
    step counter is summed exactly: the decoded sums equal strategies.partial's average."""
    from flwr.app import Array

    from medfed.config import SecAggConfig
    from medfed.federation.secagg import decode, encode_update
    from medfed.strategies.partial import partial_average

    rng = np.random.default_rng(0)
    received = ArrayRecord({"image.w": Array(rng.normal(size=(4, 3)).astype(np.float32)),
                            "clinical.w": Array(rng.normal(size=(5,)).astype(np.float32)),
                            "bn.steps": Array(np.asarray(7, np.int64))})
    full = ArrayRecord({k: Array(np.asarray(a.numpy() + (0.3 if a.numpy().dtype.kind == "f"
                                                         else 4), a.numpy().dtype))
                        for k, a in received.items()})
    clinical_only = ArrayRecord({"clinical.w": Array((received["clinical.w"].numpy()
                                                      - 0.5).astype(np.float32)),
                                 "bn.steps": Array(np.asarray(9, np.int64))})
    secagg = SecAggConfig()
    total = encode_update(received, full, 30, secagg) + encode_update(
        received, clinical_only, 10, secagg)
    decoded, clipped = decode(total & (MOD_RANGE - 1), received, secagg)
    expected = partial_average(received, [(full, 30.0), (clinical_only, 10.0)])
    assert clipped == 0
    for key in received:
        assert decoded[key].numpy().dtype == received[key].numpy().dtype
        assert np.allclose(decoded[key].numpy(), expected[key].numpy(),
                           atol=2 * secagg.clipping_range / secagg.quantization_range), key


def test_report_says_whether_secure_aggregation_was_used():
    from medfed.reports.report import _summary_lines

    for secure, expected in (("none", "none (the coordinator saw each site's update)"),
                             ("secagg+", "SecAgg+ (the coordinator saw only the weighted sum")):
        cfg = small_config(strategy__secure=secure)
        report = {"dataset": "breast-cancer", "description": "", "sites": [],
                  "config": cfg.model_dump(), "feature_scaling": "none",
                  "timing": {"total_s": 1.0, "federated_s": 1.0}}
        line = next(x for x in _summary_lines(report) if x.startswith("- secure aggregation"))
        assert expected in line
