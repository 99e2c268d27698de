"""``medfed privacy audit``: train the federation once with canaries in every site's training
rows and turn each site's canary scores into an empirical lower bound on its epsilon
(one-run auditing, ``medfed.privacy.audit``).

Score of a canary (white-box on what the site releases): every round, the site's update
(model sent back minus model received) is regressed, by least squares, on the loss
gradients (at the model received) of all canaries and of the site's own training rows; a
canary's coefficient is how much of its gradient the update holds (about lr / batch size when
it was trained on, about 0 when not). Coefficients are standardised per round and summed.
The auditor may know every record but the coins (Steinke et al.'s threat model), never the
DP noise. The updates are exactly the site's releases its DP-SGD guarantee covers (every
later global model is their post-processing), so the bound is valid for its claimed
(epsilon, delta).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message

from medfed.config import RUN_AUDIT_CANARIES, RUN_EXPERIMENT, ExperimentConfig
from medfed.datasets.base import DataInfo, Site
from medfed.datasets.scaling import standardize
from medfed.datasets.sites import simulated_federation
from medfed.errors import MedFedError
from medfed.federation import messages
from medfed.federation.rounds import RoundHooks, run_federation
from medfed.models import for_experiment
from medfed.privacy import simulation as privacy_sim
from medfed.privacy.audit import Canaries, CanarySpec, audit, site_canaries, with_canaries
from medfed.privacy.ledger import Ledger
from medfed.simulation.engine import SITE_NODE_BASE, InProcessGrid
from medfed.tasks import get_task

AUDIT_FILE = "audit.json"
AUDITABLE_TASKS = ("binary", "multiclass")
SCORE = ("per round, each canary's least-squares share of its own loss gradient in the "
         "site's update (jointly with the site's own rows), standardised, summed over rounds")


class CanaryScorer:
    """Accumulates each site's canary scores from the (sent, returned) models of each round."""

    def __init__(self, cfg: ExperimentConfig, info: DataInfo, canaries: list[Canaries],
                 sites: list[Site]) -> None:
        self.model = for_experiment(cfg, info)
        self.task = get_task(info.task)
        self.info = info
        self.canaries = canaries
        self.sites = sites  # the rows that are not canaries: the auditor may know them
        self.scores = [np.zeros(len(c.y)) for c in canaries]

    def gradients(self, state: dict[str, torch.Tensor], site: int, config: ConfigRecord
                  ) -> tuple[torch.Tensor, list[str]]:
        """(m + n, P) gradient of the loss of each canary, then of each of the site's own
        n training rows, at the weights ``state`` (eval mode), and the names of the
        parameters, in the order of the P columns."""
        canaries, rows = self.canaries[site], self.sites[site]
        x = np.concatenate([canaries.x, rows.x_train.astype(np.float32)])
        y = np.concatenate([canaries.y, rows.y_train])
        scaling = messages.read_scaling(config) if self.info.standardize else None
        x = x if scaling is None else standardize(x, *scaling)
        self.model.load_state_dict(state)
        self.model.eval()
        params = {k: v.detach() for k, v in self.model.named_parameters()}
        buffers = dict(self.model.named_buffers())

        def loss_one(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            out = torch.func.functional_call(self.model, (p, buffers), (xi.unsqueeze(0),))
            return self.task.loss(out, yi.unsqueeze(0))

        grads = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))(
            params, torch.as_tensor(x), torch.as_tensor(y))
        return torch.cat([grads[k].reshape(len(x), -1) for k in params], dim=1), list(params)

    def add_round(self, site: int, sent: ArrayRecord, reply: ArrayRecord,
                  config: ConfigRecord) -> None:
        before = sent.to_torch_state_dict()
        after = {**before, **reply.to_torch_state_dict()}  # a partial model sends a part
        grads, names = self.gradients(before, site, config)
        descent = torch.cat([(before[k] - after[k]).reshape(-1).double() for k in names])
        m = len(self.canaries[site].y)
        self.scores[site] += standardised(gradient_weights(grads.double(), descent)[:m])


def gradient_weights(grads: torch.Tensor, descent: torch.Tensor) -> np.ndarray:
    """(k,) least-squares weights a with descent ~ a @ grads: how much of each record's
    gradient (k, P) the site's step (P,) contains, every record's share estimated jointly
    (gradients overlap; a one-at-a-time projection would credit a canary with the steps
    the site's own rows and the other canaries caused). An included canary's weight is about
    lr / batch size, an excluded one's about 0. Ridge-stabilised for collinear gradients."""
    gram = grads @ grads.T
    ridge = 1e-6 * torch.trace(gram) / len(gram) * torch.eye(len(gram), dtype=gram.dtype)
    return torch.linalg.solve(gram + ridge, grads @ descent).numpy()


def standardised(values: np.ndarray) -> np.ndarray:
    """(m,) values with mean 0 and standard deviation 1, so every round weighs the same."""
    spread = values.std()
    return (values - values.mean()) / (spread if spread > 0 else 1.0)


class ScoringGrid(InProcessGrid):
    """The in-process engine, scoring every site's canaries on each train exchange."""

    def __init__(self, client_app, n_sites: int, run_config: dict,
                 scorer: CanaryScorer) -> None:
        super().__init__(client_app, n_sites, run_config)
        self.scorer = scorer

    def _deliver(self, message: Message) -> Message:
        reply = super()._deliver(message)
        if message.metadata.message_type == "train" and not reply.has_error():
            self.scorer.add_round(message.metadata.dst_node_id - SITE_NODE_BASE,
                                  message.content[messages.ARRAYS],
                                  reply.content[messages.ARRAYS],
                                  message.content[messages.CONFIG])
        return reply


def audit_config(cfg: ExperimentConfig, ledger_dir: Path) -> ExperimentConfig:
    """The run the audit trains: in-process, no baselines, a fresh ledger (the claim is this
    run's epsilon, and the sites' real budgets are not spent)."""
    cfg = cfg.model_copy(deep=True)
    cfg.engine = "inprocess"
    cfg.baselines.centralized = cfg.baselines.local_only = False
    cfg.privacy.ledger_dir = str(ledger_dir)
    return cfg


def check_auditable(cfg: ExperimentConfig, info: DataInfo, canaries: int) -> None:
    if info.task not in AUDITABLE_TASKS:
        raise MedFedError(f"the audit needs a classification task, this config's is "
                          f"{info.task!r}", where=f"dataset.name={cfg.dataset.name}",
                          fix="audit a binary or multiclass config (e.g. "
                          "configs/breast-cancer-dp.yaml)")
    if canaries < 4:
        raise MedFedError(f"{canaries} canaries per site are too few to guess from",
                          where="--canaries", fix="give at least 4 (e.g. --canaries 50)")


def run_audit(cfg: ExperimentConfig, canaries: int, *, seed: int | None = None,
              guess_fraction: float = 0.25, confidence: float = 0.95,
              on_round: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train ``cfg``'s federation once with ``canaries`` canaries per site; per site, the
    claimed epsilon and the audited lower bound (``audit.json``'s content)."""
    from medfed.federation.client_app import app as client_app
    from medfed.simulation.runner import check_config

    start = time.perf_counter()
    check_config(cfg)
    spec = CanarySpec(canaries, cfg.seed if seed is None else seed)
    with tempfile.TemporaryDirectory(prefix="medfed-audit-") as work:
        cfg = audit_config(cfg, Path(work) / "privacy")
        sites, info = simulated_federation(cfg.to_json())
        check_auditable(cfg, info, canaries)
        audited = [with_canaries(s, info.n_classes, spec.to_json()) for s in sites]
        privacy = privacy_sim.prepare(cfg, audited)
        scorer = CanaryScorer(cfg, info, [site_canaries(s, info.n_classes, spec)
                                          for s in sites], sites)
        run_config = {RUN_EXPERIMENT: cfg.to_json(), RUN_AUDIT_CANARIES: spec.to_json(),
                      **privacy.run_config()}
        grid = ScoringGrid(client_app, len(sites), run_config, scorer)
        fed = run_federation(grid, cfg, RoundHooks(on_round=on_round, seed=cfg.seed))
        claims = claimed_epsilons(cfg, privacy.ledger_dir, sites)
    per_site = {}
    for site, canary_set, scores in zip(sites, scorer.canaries, scorer.scores, strict=True):
        result = audit(scores, canary_set.included, cfg.privacy.delta,
                       guess_fraction=guess_fraction, confidence=confidence)
        claim = claims.get(site.name)
        result["claimed_epsilon"] = claim
        result["within_claim"] = None if claim is None else \
            result["epsilon_lower_bound"] <= claim
        per_site[site.name] = result
    return summary(cfg, spec, per_site, len(fed.history), confidence,
                   time.perf_counter() - start)


def claimed_epsilons(cfg: ExperimentConfig, ledger_dir: Path | None,
                     sites: list[Site]) -> dict[str, float]:
    """Each site's epsilon for this run, from its ledger (none without DP-SGD)."""
    if cfg.privacy.mode != "dp-sgd" or ledger_dir is None:
        return {}
    return {s.name: Ledger.open(ledger_dir, s.name).epsilon(cfg.privacy.delta,
                                                            cfg.privacy.accountant)
            for s in sites}


def summary(cfg: ExperimentConfig, spec: CanarySpec, per_site: dict[str, dict],
            rounds: int, confidence: float, seconds: float) -> dict[str, Any]:
    claim_unit = {"dp-sgd": "one privacy unit (patient, stay or row; each canary is a "
                            "unit of its own)",
                  "central": "one site's whole update (client-level DP): not audited here",
                  "none": "no claim"}[cfg.privacy.mode]
    return {
        "method": "one-run audit (Steinke, Nasr, Jagielski, NeurIPS 2023, Theorem 5.2)",
        "config": cfg.name, "dataset": cfg.dataset.name, "privacy_mode": cfg.privacy.mode,
        "claim_unit": claim_unit, "delta": cfg.privacy.delta, "confidence": confidence,
        "canaries_per_site": spec.m, "canary_seed": spec.seed,
        "canaries": "records with random labels, each in with probability 1/2 (tables: a "
                    "random direction from the site's mean, about 1 std per feature; images: "
                    "uniform noise over the site's intensity range)",
        "score": SCORE, "caveats": caveats(cfg), "rounds": rounds,
        "seconds": round(seconds, 2), "sites": per_site,
    }


def caveats(cfg: ExperimentConfig) -> list[str]:
    """Why a bound may be loose (it stays valid): the score models a plain SGD step on the
    canary itself."""
    out = []
    if cfg.train.optimizer != "sgd":
        out.append(f"train.optimizer={cfg.train.optimizer}: an adaptive step is not a sum of "
                   "gradients, so the score sees less; the bound is valid but loose")
    if cfg.train.augment:
        out.append(f"train.augment={cfg.train.augment}: sites train on transformed canaries, "
                   "the score uses the originals; the bound is valid but loose")
    return out


def read_audit(path: Path) -> dict[str, Any]:
    """An ``audit.json`` written by ``medfed privacy audit``; damage is one clear line."""
    import json

    fix = "rerun `medfed privacy audit CONFIG --out FOLDER`"
    if not path.is_file():
        raise MedFedError("no audit file here", where=str(path), fix=fix)
    try:
        result = json.loads(path.read_text())
        if not all(isinstance(row["epsilon_lower_bound"], float | int)
                   for row in result["sites"].values()):
            raise TypeError
        result["canaries_per_site"], result["confidence"], result["delta"]  # noqa: B018
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise MedFedError("not an audit.json of `medfed privacy audit`", where=str(path),
                          fix=fix) from None
    return result
