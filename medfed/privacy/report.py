"""The ``privacy`` section of report.json, its markdown lines and MLflow metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medfed.config import ExperimentConfig
from medfed.privacy.accounting import epsilon_of
from medfed.privacy.ledger import Ledger
from medfed.privacy.units import GUARANTEES, ROW_LEVEL, PrivacyUnit

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
            # every DP-SGD spend of this run (not the summary noise): its unit ("" = a row)
            "units": sorted({s.unit or "row" for s in mine
                             if s.grad_sample_mode != "stats-gaussian"}),
            "runs_in_ledger": len(ledger.runs())}


def dp_sgd_section(cfg: ExperimentConfig, site_names: list[str], ledger_dir: str | Path,
                   run_id: str, history: list[dict[str, Any]], baselines: dict[str, dict],
                   earlier_runs: dict[str, set[str]] | None = None,
                   unit: PrivacyUnit | None = None) -> dict[str, Any]:
    """report.json's ``privacy`` under DP-SGD; ``unit``: what one sample was (default: as the
    ledgers recorded it, a row when they do not say)."""
    refused: dict[str, int] = {}
    for h in history:  # history names nodes; node 1000 + i is site i in simulation
        for node in h.get("sites_refused", {}):
            i = int(node) - 1000
            if 0 <= i < len(site_names):
                refused[site_names[i]] = refused.get(site_names[i], 0) + 1
    per_site = {name: site_entry(cfg, Ledger.open(ledger_dir, name), run_id,
                                 refused.get(name, 0), (earlier_runs or {}).get(name))
                for name in site_names}
    recorded = {u for e in per_site.values() for u in e["units"]}
    if unit is None or (recorded and recorded != {unit.name}):  # e.g. an arm trained per row
        unit = PrivacyUnit(recorded.pop() if len(recorded) == 1 else "row")
    return {"mode": "dp-sgd", **unit.as_dict(),
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
             f"privacy unit: {privacy['level']}); ledgers in `{privacy['ledger_dir']}`",
             f"- guarantee: {privacy.get('guarantee', '—')}",
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


def card_section(cfg: ExperimentConfig, privacy: dict[str, Any] | None) -> dict[str, Any]:
    """The model card's ``privacy``: mode, unit, level, guarantee and the epsilon spent.

    ``privacy``: report.json's section (None for a real federation, whose coordinator holds no
    ledger: the unit is then what privacy.unit asks, each site's data establishing it)."""
    mode = cfg.privacy.mode
    if mode == "none":
        return {"mode": "none", "guarantee": "none beyond the data staying on site"}
    if mode == "central":
        return {"mode": mode, "unit": "site", "level": (privacy or {}).get("level", "client"),
                "guarantee": (privacy or {}).get("guarantee", "client-level central DP"),
                "epsilon": (privacy or {}).get("epsilon"), "delta": cfg.privacy.delta}
    if not privacy:
        requested = cfg.privacy.unit
        unit = PrivacyUnit(requested).as_dict() if requested != "auto" else {
            "unit": "auto", "level": "patient or stay, as each site's data establishes it "
            "(a site whose data cannot refuses DP-SGD)", "guarantee": ""}
        return {"mode": mode, **unit, "epsilon_budget": cfg.privacy.epsilon,
                "delta": cfg.privacy.delta}
    spent = [e["epsilon"] for e in privacy.get("per_site", {}).values()]
    return {"mode": mode, "unit": privacy.get("unit", "row"),
            "level": privacy.get("level", ROW_LEVEL),
            "guarantee": privacy.get("guarantee", GUARANTEES["row"]),
            "epsilon_max": max(spent) if spent else None,
            "epsilon_budget": privacy.get("epsilon_budget"), "delta": privacy.get("delta"),
            "accountant": privacy.get("accountant")}


def card_lines(section: dict[str, Any]) -> list[str]:
    """model_card.md lines of ``card_section`` (and of anything added beside it, e.g. an
    audit)."""
    lines = [f"- mode: {section['mode']}"]
    if section.get("level"):
        lines.append(f"- privacy unit: {section['level']}")
    if section.get("guarantee"):
        lines.append(f"- guarantee: {section['guarantee']}")
    if section.get("epsilon_max") is not None:
        lines.append(f"- epsilon spent: at most {section['epsilon_max']:.3f} per site "
                     f"(budget {section['epsilon_budget']:g}, delta {section['delta']:g})")
    audit = section.get("audit")
    if audit:
        lines.append(f"- empirical audit ({audit['method']}, {audit['canaries_per_site']} "
                     f"canaries per site, {audit['confidence'] * 100:g} % confidence, "
                     f"{audit['date']}; {audit['note']}):")
        lines += [f"  - {site}: audited epsilon >= {row['audited_epsilon_lower_bound']:.2f}"
                  + ("" if row["claimed_epsilon"] is None else
                     f" vs claimed {row['claimed_epsilon']:.3f}")
                  for site, row in audit["per_site"].items()]
    extra = {k: v for k, v in section.items() if k not in (
        "mode", "unit", "level", "guarantee", "epsilon_max", "epsilon_budget", "delta",
        "accountant", "audit")}
    lines += [f"- {k}: {v}" for k, v in extra.items()]
    return lines


def unit_label(unit: str) -> str:
    """A ledger spend's unit for a table; ``—``: not recorded (a ledger from before units)."""
    return unit or "—"


def unit_guarantees(units: set[str]) -> list[str]:
    """One line per unit in a set of ledgers: what epsilon protects (``privacy report``)."""
    return [f"unit {unit}: {GUARANTEES[unit]}" if unit else
            f"unit —: not recorded (written before privacy units), so per row only: "
            f"{GUARANTEES['row']}" for unit in sorted(units)]
