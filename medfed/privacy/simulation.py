"""Privacy in ``medfed simulate``: checks before any training, ledger location, report."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medfed.config import RUN_ID, RUN_LEDGER_DIR, ExperimentConfig
from medfed.datasets.base import Site
from medfed.errors import MedFedError
from medfed.privacy.ledger import Ledger
from medfed.privacy.report import central_section, dp_sgd_section
from medfed.privacy.units import PrivacyUnit, resolve_unit, unit_index


@dataclass
class PrivacyRun:
    mode: str
    run_id: str
    ledger_dir: Path | None = None
    earlier_runs: dict[str, set[str]] = field(default_factory=dict)  # site -> run ids before

    def run_config(self) -> dict[str, str]:
        """What the ClientApps need: where the ledgers are and which run this is."""
        out = {RUN_ID: self.run_id}
        if self.ledger_dir is not None:
            out[RUN_LEDGER_DIR] = str(self.ledger_dir)
        return out


def prepare(cfg: ExperimentConfig, sites: list[Site]) -> PrivacyRun:
    """Fail fast (exit 2) on bad epsilon/delta, an impossible plan or a corrupted ledger."""
    run = PrivacyRun(cfg.privacy.mode, uuid.uuid4().hex[:12])
    if cfg.privacy.mode == "central":
        from medfed.privacy.central import central_noise

        central_noise(cfg, len(sites))
    if cfg.privacy.mode != "dp-sgd":
        return run
    _check_dp_sgd(cfg, sites)
    _open_ledgers(cfg, run, sites)
    if cfg.baselines.centralized or cfg.baselines.local_only:
        _plan_baselines(cfg, sites)
    return run


def _check_dp_sgd(cfg: ExperimentConfig, sites: list[Site]) -> None:
    """Refuse what DP-SGD cannot clip per patient: FedProx's term, the Cox likelihood."""
    if cfg.strategy.name == "fedprox" or cfg.strategy_options().get("proximal_mu"):
        raise MedFedError("strategy.name=fedprox: its proximal term is not per-sample, so "
                          "DP-SGD cannot clip it; use fedavg (or another strategy) with "
                          "privacy.mode=dp-sgd")
    if sites and sites[0].task == "survival":
        raise MedFedError("privacy.mode=dp-sgd with a survival task: the Cox partial "
                          "likelihood couples the patients of a batch, so per-patient clipping "
                          "gives no guarantee; use privacy.mode=central or none")
    for site in sites:  # before any training: the unit every site will protect
        resolve_unit(cfg.privacy.unit, site.unit, where=f"{cfg.dataset.name}: site {site.name!r}")


def n_units(cfg: ExperimentConfig, site: Site) -> int:
    """The site's training units under ``privacy.unit`` (patients, stays, or rows)."""
    grouped = resolve_unit(cfg.privacy.unit, site.unit).grouped
    return unit_index(site.units_train if grouped else None, site.n_train)[1]


def privacy_unit(cfg: ExperimentConfig, sites: list[Site]) -> PrivacyUnit:
    """The unit of the run (every site's data says the same; the first one that does not
    establish it is the error)."""
    units = {resolve_unit(cfg.privacy.unit, s.unit, where=s.name).name for s in sites}
    return PrivacyUnit(units.pop() if len(units) == 1 else "row")


def _open_ledgers(cfg: ExperimentConfig, run: PrivacyRun, sites: list[Site]) -> None:
    """Each site's ledger: plan this run against its budget, remember its earlier runs."""
    from medfed.privacy.site import default_ledger_dir, site_plan

    run.ledger_dir = Path(cfg.privacy.ledger_dir) if cfg.privacy.ledger_dir \
        else default_ledger_dir()
    for site in sites:
        ledger = Ledger.open(run.ledger_dir, site.name)
        site_plan(cfg, ledger, run.run_id, n_units(cfg, site))
        run.earlier_runs[site.name] = set(ledger.runs())


def _plan_baselines(cfg: ExperimentConfig, sites: list[Site]) -> None:
    """The DP-SGD baselines must be plannable at the same budget (all sites' rows pooled)."""
    from medfed.privacy.accounting import plan_site

    n = sum(n_units(cfg, s) for s in sites)
    plan_site(n_train=n, batch_size=cfg.train.batch_size,
              local_epochs=cfg.rounds * cfg.train.local_epochs, rounds=1,
              epsilon=cfg.privacy.epsilon, delta=cfg.privacy.delta,
              accountant=cfg.privacy.accountant, noise_multiplier=cfg.privacy.noise_multiplier,
              site="centralized baseline", per_round=False)


def section(cfg: ExperimentConfig, run: PrivacyRun, sites: list[Site],
            history: list[dict[str, Any]], baselines: dict[str, dict[str, Any]]
            ) -> dict[str, Any] | None:
    """report.json's ``privacy`` (None when privacy.mode is none).

    ``baselines``: the DP-SGD accounting of each reference model, by arm (``centralized``,
    ``local_only/<site>``), as the baselines' training returned it; empty when none.
    """
    if run.mode == "none":
        return None
    if run.mode == "central":
        return central_section(cfg, len(sites), len(history))
    return dp_sgd_section(cfg, [s.name for s in sites], run.ledger_dir, run.run_id, history,
                          baselines, run.earlier_runs, unit=privacy_unit(cfg, sites))
