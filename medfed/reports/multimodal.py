"""report.md lines for ``report["multimodal"]`` (``model.name: multimodal`` runs).

The section itself (image-only / clinical-only arms, modality ablations, clinical-only sites)
is computed by ``medfed.simulation.multimodal_arms``; this module only renders it.
"""

from __future__ import annotations

from typing import Any

ROWS = (("multimodal", "models", "multimodal"),
        ("image only", "models", "image_only"),
        ("clinical only", "models", "clinical_only"),
        ("multimodal, images removed", "modality_removed", "without_image"),
        ("multimodal, clinical removed", "modality_removed", "without_clinical"))


def multimodal_markdown(report: dict[str, Any]) -> list[str]:
    """report.md lines for ``report["multimodal"]`` (none when absent)."""
    section = report.get("multimodal")
    if not section:
        return []
    return [*_model_table(section), *_summary(section), *_clinical_only_sites(section)]


def _model_table(section: dict[str, Any]) -> list[str]:
    """The metric of every model and ablation, pooled then per site."""
    metric = section["metric"]
    names = list(section["models"]["multimodal"]["per_site"])
    lines = ["", f"## Multimodal: {metric} by model (federated)", "",
             "| model | pooled | " + " | ".join(names) + " |",
             "|---" * (len(names) + 2) + "|"]
    for label, group, key in ROWS:
        scores = section[group][key]
        cells = [_fmt(scores["pooled"].get(metric))]
        cells += [_fmt(scores["per_site"][n].get(metric)) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _summary(section: dict[str, Any]) -> list[str]:
    modalities = ", ".join(f"{s}: {'+'.join(m) or 'none'}"
                           for s, m in section["site_modalities"].items())
    return ["", f"Fusion gain (multimodal minus the better single modality, pooled): "
            f"{_fmt(section['fusion_gain'])}. Site modalities: " + modalities
            + f". Scaling: {section['clinical_scaling']}.", ""]


def _clinical_only_sites(section: dict[str, Any]) -> list[str]:
    metric = section["metric"]
    lines: list[str] = []
    for site, row in section["clinical_only_sites"].items():
        lines += [f"Clinical-only site {site}: its test {metric} {_fmt(row['with']['site'])} "
                  f"with it in the federation, {_fmt(row['without']['site'])} without; the "
                  f"other sites' mean {_fmt(row['with']['other_sites_mean'])} with, "
                  f"{_fmt(row['without']['other_sites_mean'])} without.", ""]
    return lines


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"
