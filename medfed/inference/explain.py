"""`medfed explain`: why the model decided.

Imaging: Grad-CAM / Grad-CAM++ (``monai.visualize``) or occlusion sensitivity over the
preprocessed study, overlaid on it (PNG per study; three orthogonal middle slices for 3D).
Tables: integrated gradients per prediction (baseline: the federation's mean patient, i.e. 0
after scaling) and a global importance plot (mean |attribution| per feature). Gradients only
need a differentiable network, so GroupNorm nets trained with DP-SGD work the same.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from medfed.inference.bundle import ModelBundle
from medfed.inference.inputs import Study, iter_studies, study_list, table_input
from medfed.inference.predict import score_rows
from medfed.io import atomic_write_bytes, atomic_write_json, atomic_write_text

Progress = Callable[[int, int], None]
METHODS = ("gradcam", "gradcampp", "occlusion")
IG_STEPS = 32


# ---------------------------------------------------------------- tables
def target_output(bundle: ModelBundle, outputs: torch.Tensor, target: torch.Tensor
                  ) -> torch.Tensor:
    """The scalar per row that is explained: the logit of the predicted class (multiclass),
    the positive logit (binary, sepsis) or the log-risk (survival)."""
    if outputs.ndim == 1:
        return outputs
    if bundle.task_name == "multiclass":
        return outputs.gather(1, target[:, None])[:, 0]
    return outputs.reshape(len(outputs), -1)[:, 0]


def integrated_gradients(bundle: ModelBundle, x: np.ndarray, target: np.ndarray,
                         steps: int = IG_STEPS) -> np.ndarray:
    """Integrated gradients of scaled rows ``x`` (N, F) or (N, L, F) from the zero baseline;
    returns attributions of the same shape (they sum to f(x) - f(0) up to the step error)."""
    model = bundle.model
    device = next(model.parameters()).device
    model.eval()
    xs = torch.as_tensor(x, dtype=torch.float32, device=device)
    t = torch.as_tensor(target, dtype=torch.long, device=device)
    total = torch.zeros_like(xs)
    for alpha in (torch.arange(steps, dtype=torch.float32) + 0.5) / steps:
        point = (alpha * xs).detach().requires_grad_(True)
        out = target_output(bundle, model(point), t)
        (grad,) = torch.autograd.grad(out.sum(), point)
        total += grad
    return (xs * total / steps).detach().cpu().numpy()


def explain_table(bundle: ModelBundle, path: Path, out: Path) -> dict[str, Any]:
    table = table_input(bundle, path, labelled=bundle.task_name == "timeseries")
    scores = score_rows(bundle, table.x)
    target = scores.argmax(1) if scores.ndim == 2 else np.zeros(len(scores), int)
    attributions = integrated_gradients(bundle, bundle.scale(table.x), target)
    if attributions.ndim == 3:  # sequences: a feature's attribution summed over the hours
        attributions = attributions.sum(axis=1)
    names = feature_names(bundle, attributions.shape[1])
    frame = pd.DataFrame(attributions, columns=names)
    frame.insert(0, "id", table.ids)
    for key, value in table.extra.items():
        frame.insert(1, key, value)
    atomic_write_text(out / "attributions.csv", frame.to_csv(index=False))
    importance = dict(zip(names, np.abs(attributions).mean(axis=0).astype(float).tolist(),
                          strict=True))
    ranked = dict(sorted(importance.items(), key=lambda kv: -kv[1]))
    atomic_write_json(out / "importance.json", {"method": "integrated gradients",
                                                "baseline": "federation mean (0 after scaling)",
                                                "steps": IG_STEPS, "rows": len(frame),
                                                "mean_abs_attribution": ranked})
    atomic_write_bytes(out / "importance.png", importance_plot(ranked))
    return {"rows": len(frame), "top": list(ranked)[:5]}


def feature_names(bundle: ModelBundle, n: int) -> list[str]:
    names = bundle.pre.get("feature_names") or []
    return list(names) if len(names) == n else [f"f{i}" for i in range(n)]


def importance_plot(ranked: dict[str, float], top: int = 20) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = list(ranked.items())[:top][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(items) + 1))
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set(xlabel="mean |integrated gradient| (logit units)", title="Global feature importance")
    return _png(fig)


# ---------------------------------------------------------------- imaging
def last_conv(model: nn.Module) -> str:
    """The name of the last convolution whose output has more than one channel."""
    names = [name for name, m in model.named_modules()
             if isinstance(m, nn.Conv2d | nn.Conv3d) and m.out_channels > 2]
    if not names:
        names = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Conv3d)]
    return names[-1]


def saliency(bundle: ModelBundle, x: np.ndarray, class_idx: int, method: str) -> np.ndarray:
    """A map over the preprocessed study ``x`` (1, C, *spatial) -> (*spatial) in [0, 1]."""
    from monai.visualize import GradCAM, GradCAMpp, OcclusionSensitivity

    model = bundle.model
    device = next(model.parameters()).device
    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=device)
    if method == "occlusion":
        mask_size = [max(s // 8, 1) for s in x.shape[2:]]
        occ = OcclusionSensitivity(nn_module=model, mask_size=mask_size, n_batch=8,
                                   overlap=0.5)
        with torch.no_grad():
            maps, _ = occ(xt)
        heat = -maps[0, class_idx].float()  # a drop in the class score = important
    else:
        cam_type = GradCAMpp if method == "gradcampp" else GradCAM
        # MONAI's default post-processing maps (min, max) to (1, 0): keep the raw map
        cam = cam_type(nn_module=model, target_layers=last_conv(model),
                       postprocessing=_unchanged)
        heat = cam(x=xt, class_idx=class_idx)[0, 0].float()
    heat = heat.detach().cpu().numpy()
    heat = heat - heat.min()
    return heat / heat.max() if heat.max() > 0 else heat


def _unchanged(x: torch.Tensor) -> torch.Tensor:
    return x


def overlay_png(image: np.ndarray, heat: np.ndarray, title: str) -> bytes:
    """Image (*spatial) with its heat map; three orthogonal middle slices for 3D."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if image.ndim == 2:
        pairs = [(image, heat, "")]
    else:
        pairs = [(np.take(image, image.shape[a] // 2, axis=a),
                  np.take(heat, heat.shape[a] // 2, axis=a), f"middle slice, axis {a}")
                 for a in (2, 1, 0)]
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.2 * len(pairs), 3.4))
    for ax, (img, h, label) in zip(np.atleast_1d(axes), pairs, strict=True):
        ax.imshow(img.T, cmap="gray", origin="lower")
        ax.imshow(h.T, cmap="jet", alpha=0.4, origin="lower", vmin=0, vmax=1)
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def study_class(bundle: ModelBundle, study: Study) -> int:
    """The class explained: the predicted one (segmentation: the first foreground label)."""
    if bundle.task_name == "segmentation":
        return 1
    with torch.no_grad():
        device = next(bundle.model.parameters()).device
        out = bundle.model(torch.as_tensor(study.x[:1], device=device))
    return int(out.argmax(1)[0]) if out.shape[1] > 1 else 0


def explain_studies(bundle: ModelBundle, path: Path, out: Path, method: str,
                    progress: Progress | None = None) -> dict[str, Any]:
    studies = study_list(path, labelled=False)
    rows = []
    for i, study in enumerate(iter_studies(bundle, studies, labelled=False)):
        middle = study.x[len(study.x) // 2: len(study.x) // 2 + 1]  # slices: the middle one
        class_idx = study_class(bundle, study)
        heat = saliency(bundle, middle, class_idx, method)
        names = bundle.class_names
        label = names[class_idx] if class_idx < len(names) else str(class_idx)
        title = f"{study.id}: {method}, class {label}"
        atomic_write_bytes(out / f"{study.id}.png", overlay_png(middle[0, 0], heat, title))
        rows.append({"id": study.id, "png": f"{study.id}.png", "method": method,
                     "class_explained": class_idx})
        if progress:
            progress(i + 1, len(studies))
    atomic_write_text(out / "explanations.csv", pd.DataFrame(rows).to_csv(index=False))
    return {"rows": len(rows)}


def explain(bundle: ModelBundle, path: Path, out: Path, method: str = "gradcam",
            progress: Progress | None = None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    if bundle.is_image:
        return explain_studies(bundle, path, out, method, progress)
    return explain_table(bundle, path, out)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
