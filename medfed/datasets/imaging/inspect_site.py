"""`medfed data inspect`: what a site folder holds, and a PNG montage of a few samples."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np

from medfed.datasets.imaging.check import CheckResult, check_site
from medfed.datasets.imaging.dicom import WINDOWS, DicomProblem
from medfed.datasets.imaging.manifest import manifest_rows, read_manifest
from medfed.datasets.imaging.volume import load_image, load_mask
from medfed.io import atomic_write_bytes


def histogram(values: list[float], bins: int = 6) -> list[dict]:
    """Equal-width bins of ``values``: [{"from", "to", "count"}]."""
    if not values:
        return []
    array = np.asarray(values, float)
    if array.min() == array.max():
        return [{"from": float(array[0]), "to": float(array[0]), "count": len(array)}]
    counts, edges = np.histogram(array, bins=bins)
    return [{"from": round(float(a), 3), "to": round(float(b), 3), "count": int(c)}
            for a, b, c in zip(edges[:-1], edges[1:], counts, strict=True) if c]


def inspect_summary(result: CheckResult) -> dict:
    """Counts per label, modalities, size and spacing histograms of the readable rows."""
    samples = result.samples
    voxels = [float(np.prod(s["shape"])) for s in samples]
    spacing = [float(min(s["spacing"])) for s in samples]
    return {
        **result.summary,
        "readable_rows": len(samples),
        "problems": len(result.problems),
        "size_voxels_histogram": histogram(voxels),
        "finest_spacing_mm_histogram": histogram(spacing),
        "dims": dict(Counter(f"{len(s['shape'])}D" for s in samples)),
        # what MedFed uses only with care (e.g. a gantry-tilted series, resampled), per row
        "warnings": {f"row {s['row']}": "; ".join(s["warnings"]) for s in samples
                     if s.get("warnings")},
    }


def _middle(array: np.ndarray) -> np.ndarray:
    """A 2D view: the middle axial slice of a volume."""
    return array if array.ndim == 2 else array[:, :, array.shape[2] // 2]


def _mask_slice(mask: np.ndarray) -> int:
    """The axial slice with the most mask voxels (so the lesion shows)."""
    return int(np.argmax(mask.reshape(-1, mask.shape[2]).sum(axis=0)))


def montage_png(site_dir: Path, rows_to_show: list[int], label_column: str = "label") -> bytes:
    """A grid of up to len(rows_to_show) samples (middle or lesion slice, mask outlined)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = read_manifest(site_dir, label_column)
    rows = {r.number: r for r in manifest_rows(site_dir, frame, label_column)}
    n = max(len(rows_to_show), 1)
    cols = min(n, 4)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(3 * cols, 3 * ((n + 3) // 4)),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, number in zip(axes.ravel(), rows_to_show, strict=False):
        row = rows[number]
        try:
            volume = load_image(row.image, row.series_uid, row.volume_index)
            mask = load_mask(row.mask, volume) if row.mask is not None else None
        except DicomProblem:
            continue
        k = _mask_slice(mask) if mask is not None and mask.ndim == 3 and mask.any() else None
        image = _middle(volume.array) if k is None else volume.array[:, :, k]
        low, high = np.percentile(image, [1, 99])
        if volume.modality == "CT":  # air dominates CT percentiles: show soft tissue
            low, high = WINDOWS["soft_tissue"][0] - 200, WINDOWS["soft_tissue"][0] + 200
        ax.imshow(image.T, cmap="gray", origin="lower", vmin=low, vmax=high)
        if mask is not None:
            m = mask if mask.ndim == 2 else mask[:, :, k if k is not None else mask.shape[2] // 2]
            if m.any():
                ax.contour(m.T, levels=[0.5], colors="red", linewidths=0.8, origin="lower")
        title = f"row {number}" + (f" label {row.label}" if row.label is not None else "")
        ax.set_title(f"{title}\n{volume.modality} {'x'.join(map(str, volume.shape))}", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def inspect_site(site_dir: Path, png: Path | None, samples: int = 8,
                 label_column: str = "label") -> tuple[dict, CheckResult]:
    """Summary of a site folder; writes the montage to ``png`` for imaging folders."""
    result = check_site(site_dir, label_column=label_column)
    if result.kind == "csv":
        return dict(result.summary), result
    summary = inspect_summary(result)
    readable = [s["row"] for s in result.samples]
    by_label: dict[str | None, list[int]] = {}
    for s in result.samples:
        by_label.setdefault(s["label"], []).append(s["row"])
    # round-robin over labels so every class shows in the montage
    chosen: list[int] = []
    while len(chosen) < min(samples, len(readable)):
        for rows in by_label.values():
            if rows and len(chosen) < samples:
                chosen.append(rows.pop(0))
    if png is not None and chosen:
        atomic_write_bytes(png, montage_png(Path(site_dir), sorted(chosen), label_column))
        summary["montage"] = str(png)
    return summary, result
