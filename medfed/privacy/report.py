"""The ``privacy`` section of report.json, its markdown lines and MLflow metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medfed.config import ExperimentConfig
from medfed.privacy.accounting import epsilon_of
from medfed.privacy.ledger import Ledger

FAIRNESS = ("local-only and centralized baselines were trained with DP-SGD at the same "
            "(epsilon, delta) per model over the same epochs, so the comparison is fair; they "
            "are references only and not recorded in any ledger")


def site_entry(cfg: ExperimentConfig, ledger: Ledger, run_id: str, refused: int,
               earlier: set[str] | None = None) -> dict[str, Any]:
    """One site: cumulative epsilon (all runs), this run's noise, steps and rate.

    This run's spends: those not in the ledger before it (``earlier``), else by run id.
    """
    p = cfg.privacy
    mine = [s for s in ledger.spends if (s.run_id not in earlier if earlier is not None
                                         else s.run_id.split("/")[0] == run_id)]
    eps = ledger.epsilon(p.delta, p.accountant)
    last = mine[-1] if mine else (ledger.spends[-1] if ledger.spends else None)
    exhausted = refused > 0
    if last is not None and not exhausted:  # would one more round pass the budget?
        more = [*ledger.history(), (last.noise_multiplier, last.sample_rate, last.steps)]
        exhausted = epsilon_of(more, p.delta, p.accountant) > p.epsilon
    return {"epsilon": eps, "delta": p.delta, "epsilon_budget": p.epsilon,
            "epsilon_this_run": epsilon_of([(s.noise_multiplier, s.sample_rate, s.steps)
                                            for s in mine], p.delta, p.accountant),
            "noise_multiplier": last.noise_multiplier if last else None,
            "max_grad_norm": p.max_grad_norm,
            "steps": sum(s.steps for s in mine),
            "sample_rate": last.sample_rate if last else None,
            "rounds_trained": len(mine), "rounds_refused": refused,
            "exhausted": bool(exhausted),
            "grad_sample_mode": last.grad_sample_mode if last else None,
            "runs_in_ledger": len(ledger.runs())}


def dp_sgd_section(cfg: ExperimentConfig, site_names: list[str], ledger_dir: str | Path,
                   run_id: str, history: list[dict[str, Any]], baselines: dict[str, dict],
                   earlier_runs: dict[str, set[str]] | None = None) -> dict[str, Any]:
    refused: dict[str, int] = {}
    for h in history:  # history names nodes; node 1000 + i is site i in simulation
        for node in h.get("sites_refused", {}):
            i = int(node) - 1000
            if 0 <= i < len(site_names):
                refused[site_names[i]] = refused.get(site_names[i], 0) + 1
    per_site = {name: site_entry(cfg, Ledger.open(ledger_dir, name), run_id,
                                 refused.get(name, 0), (earlier_runs or {}).get(name))
                for name in site_names}
    return {"mode": "dp-sgd", "level": "record (one patient)",
            "accountant": cfg.privacy.accountant, "delta": cfg.privacy.delta,
            "epsilon_budget": cfg.privacy.epsilon, "per_site": per_site,
            "ledger_dir": str(ledger_dir), "run_id": run_id,
            "baselines": dict(baselines), "baselines_note": FAIRNESS}


def central_section(cfg: ExperimentConfig, n_sites: int, rounds_done: int) -> dict[str, Any]:
    from medfed.privacy.central import central_report

    return {"mode": "central", "accountant": cfg.privacy.accountant, "delta": cfg.privacy.delta,
            "per_site": {}, **central_report(cfg, n_sites, rounds_done),
            "baselines_note": "central DP is client-level: local-only and centralized "
                              "baselines have no client-level analogue and are non-private"}


def markdown_lines(privacy: dict[str, Any] | None) -> list[str]:
    if not privacy:
        return ["- privacy: none"]
    if privacy["mode"] == "central":
        return [f"- privacy: **central DP** ({privacy['clipping']}-side clipping at "
                f"{privacy['clipping_norm']:g}, noise multiplier "
                f"{privacy['noise_multiplier']:.3g}): {privacy['guarantee']}",
                f"- {privacy['baselines_note']}"]
    lines = [f"- privacy: **DP-SGD** per site, budget epsilon {privacy['epsilon_budget']:g} "
             f"at delta {privacy['delta']:g} ({privacy['accountant']} accountant, "
             f"{privacy['level']}); ledgers in `{privacy['ledger_dir']}`",
             f"- {privacy['baselines_note']}", "",
             "| site | epsilon spent | noise | clip | steps | sample rate | clipping mode "
             "| exhausted |", "|---|---|---|---|---|---|---|---|"]
    for site, e in privacy["per_site"].items():
        noise = "—" if e["noise_multiplier"] is None else f"{e['noise_multiplier']:.3f}"
        rate = "—" if e["sample_rate"] is None else f"{e['sample_rate']:.3f}"
        lines.append(f"| {site} | {e['epsilon']:.3f} | {noise} | {e['max_grad_norm']:g} | "
                     f"{e['steps']} | {rate} | {e['grad_sample_mode'] or '—'} | "
                     f"{'yes' if e['exhausted'] else 'no'} |")
    return [*lines, ""]


def mlflow_metrics(privacy: dict[str, Any] | None) -> dict[str, float]:
    if not privacy:
        return {}
    if privacy["mode"] == "central":
        return {"privacy_client_epsilon": privacy["epsilon"]}
    return {f"privacy_epsilon_{site}": e["epsilon"] for site, e in privacy["per_site"].items()}
