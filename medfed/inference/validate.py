"""`medfed validate`: does the model work on this hospital's labelled patients?

The training report's metrics at the model's threshold, a calibration curve with its expected
calibration error, the threshold that would reach a target sensitivity here, and this site
against the per-site figures of the model card (inside the federation's range or not).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medfed.federation.train import predict
from medfed.inference.bundle import ModelBundle
from medfed.inference.calibration import calibration_curve, threshold_for_sensitivity
from medfed.inference.card import bootstrap_ci, positive_scores
from medfed.inference.inputs import iter_studies, study_list, table_input
from medfed.inference.predict import score_rows
from medfed.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from medfed.tasks.metrics import binary_metrics, clean

Progress = Callable[[int, int], None]


def labelled_scores(bundle: ModelBundle, path: Path, progress: Progress | None = None
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """(labels, scores, studies or rows) of a labelled site, as the task's metrics take them;
    segmentation: (per-image Dice rows, empty, studies), see ``dice_rows``."""
    if not bundle.is_image:
        table = table_input(bundle, path, labelled=True)
        return table.y, score_rows(bundle, table.x), len(table.ids)
    options = bundle.options
    studies = study_list(path, labelled=True, segmentation=bundle.task_name == "segmentation",
                         label_column=options.get("label_column", "label"))
    ys, scores = [], []
    for i, study in enumerate(iter_studies(bundle, studies, labelled=True)):
        s = predict(bundle.model, study.x, bundle.task)
        if bundle.task_name == "segmentation":  # keep per-image Dice only: bounded memory
            ys.append(dice_rows(bundle, study.y, s))
        else:
            ys.append(study.y)
            scores.append(s.mean(axis=0))
        if progress:
            progress(i + 1, len(studies))
    if bundle.task_name == "segmentation":
        return np.concatenate(ys), np.zeros(0), len(studies)
    return np.asarray(ys), np.stack(scores), len(studies)


def dice_rows(bundle: ModelBundle, y: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(k, n_classes - 1) Dice of each image and foreground label (NaN: label absent in both)."""
    from medfed.tasks.segmentation import dice_per_image

    return np.stack([dice_per_image(y, labels, label)
                     for label in range(1, max(bundle.info.n_classes, 2))], axis=1)


def dice_summary(rows: np.ndarray) -> dict[str, float]:
    """``dice_<label>`` (mean over images) and ``dice`` (their mean), as the training report's
    ``dice_metrics`` computes them from the same per-image values."""
    import math

    out = {f"dice_{k + 1}": float(np.nanmean(rows[:, k])) if np.isfinite(rows[:, k]).any()
           else math.nan for k in range(rows.shape[1])}
    finite = [v for v in out.values() if not math.isnan(v)]
    return {"dice": float(np.mean(finite)) if finite else math.nan, **out}


def site_metrics(bundle: ModelBundle, y: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """The training report's metrics, binary ones at the model's own threshold."""
    if bundle.task_name == "segmentation":
        return clean(dice_summary(y))
    metrics = bundle.task.metrics(y, scores)
    if bundle.task_name == "binary" and bundle.threshold is not None:
        metrics.update(binary_metrics(y, scores, bundle.threshold))
    return clean({k: float(v) for k, v in metrics.items()})


def compare_with_card(bundle: ModelBundle, metrics: dict[str, Any],
                      ci: list[float] | None) -> dict[str, Any]:
    """This site's primary metric against each training site's in the model card."""
    primary = bundle.task.primary_metric
    rows = bundle.card.get("per_site_metrics") or []
    figures = {r["site"]: r["metrics"].get(primary) for r in rows}
    values = [v for v in figures.values() if v is not None]
    here = metrics.get(primary)
    if not values or here is None:
        verdict = "no comparison: the card has no per-site figures or this site's metric is " \
                  "undefined"
        low = high = None
    else:
        low, high = min(values), max(values)
        verdict = ("inside" if low <= here <= high else "below" if here < low else "above")
        verdict = f"{verdict} the range of the {len(values)} training sites"
    return {"metric": primary, "this_site": here, "this_site_ci95": ci,
            "training_sites": figures, "training_range": [low, high], "verdict": verdict,
            "federated_pooled": (bundle.card.get("federated_metrics") or {}).get(primary)}


def validate(bundle: ModelBundle, path: Path, out: Path, target_sensitivity: float = 0.9,
             progress: Progress | None = None) -> dict[str, Any]:
    """Write validation.json, validation.md and the plots to ``out``; returns the JSON."""
    y, scores, n = labelled_scores(bundle, path, progress)
    metrics = site_metrics(bundle, y, scores)
    primary = bundle.task.primary_metric
    ci = None if bundle.task_name == "segmentation" else bootstrap_ci(bundle.task_name, y,
                                                                       scores, primary)
    result: dict[str, Any] = {"site": str(path), "model": bundle.card.get("name"),
                              "task": bundle.task_name, "n": n, "threshold": bundle.threshold,
                              "metrics": metrics,
                              "metrics_cover": f"every labelled row/study of {path}"}
    pair = positive_scores(bundle.task_name, y, scores)
    if pair is not None:
        result["calibration"] = calibration_curve(*pair)
        if bundle.task_name in ("binary", "timeseries"):
            result["threshold_for_target"] = threshold_for_sensitivity(*pair,
                                                                       target_sensitivity)
    result["comparison"] = compare_with_card(bundle, metrics, ci)
    figures = plots(result, pair)
    for name, png in figures.items():
        atomic_write_bytes(out / name, png)
    atomic_write_json(out / "validation.json", result)
    atomic_write_text(out / "validation.md", markdown(result, list(figures)))
    return result


def plots(result: dict[str, Any], pair: tuple[np.ndarray, np.ndarray] | None
          ) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {}
    if result.get("calibration"):
        curve = result["calibration"]
        fig, ax = plt.subplots(figsize=(4, 4))
        points = [(p, o) for p, o in zip(curve["predicted"], curve["observed"], strict=True)
                  if p is not None]
        ax.plot([0, 1], [0, 1], ls="--", c="grey", label="perfect")
        ax.plot(*zip(*points, strict=True), marker="o", label=f"ECE {curve['ece']:.3f}")
        ax.set(xlabel="predicted probability", ylabel="observed rate", title="Calibration")
        ax.legend()
        figures["calibration.png"] = _png(fig)
    if pair is not None:
        fig, ax = plt.subplots(figsize=(5, 3))
        y, p = pair
        ax.hist([p[y == 0], p[y == 1]], bins=20, label=["negative", "positive"], stacked=True)
        if result.get("threshold") is not None:
            ax.axvline(result["threshold"], c="k", ls="--", label="model threshold")
        ax.set(xlabel="score", ylabel="rows", title="Scores at this site")
        ax.legend()
        figures["scores.png"] = _png(fig)
    return figures


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(result: dict[str, Any], figures: list[str]) -> str:
    comparison = result["comparison"]
    lines = [f"# External validation of {result['model']}", "",
             f"- site: {result['site']} ({result['n']} rows/studies, {result['task']})",
             f"- operating threshold: {_fmt(result['threshold'])}", "", "## Metrics", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in result["metrics"].items()]
    lines += ["", "## Against the federation (model card)", "",
              f"{comparison['metric']} here: {_fmt(comparison['this_site'])}"
              + (f" (95 % CI {comparison['this_site_ci95'][0]:.3f}–"
                 f"{comparison['this_site_ci95'][1]:.3f})" if comparison["this_site_ci95"]
                 else "") + f": **{comparison['verdict']}**.", "",
              "| training site | " + comparison["metric"] + " |", "|---|---|"]
    lines += [f"| {s} | {_fmt(v)} |" for s, v in comparison["training_sites"].items()]
    if result.get("calibration"):
        lines += ["", "## Calibration", "",
                  f"Expected calibration error {result['calibration']['ece']:.3f} "
                  f"({result['calibration']['bins']} equal-width bins)."]
    target = result.get("threshold_for_target")
    if target:
        specificity = _fmt(target.get("specificity"))
        lines += ["", f"Threshold for sensitivity {target['target_sensitivity']:.2f} here: "
                      f"{_fmt(target['threshold'])} (specificity {specificity})."]
    lines += ["", *[f"![{name}]({name})" for name in figures], ""]
    return "\n".join(lines)
