"""One study as the model sees it: its sequences as channels on one grid, its mask as regions.

A multi-sequence study (e.g. MRI FLAIR, T1, T1c, T2) is one volume per channel. They must share
a voxel grid; when ``spacing`` is set, every sequence is resampled onto the first one's grid
(world coordinates), otherwise a different grid is an error naming the sequence. Raw mask
values map to named, possibly overlapping regions (``mask_labels``: ``{wt: [1, 2, 3, 4],
tc: [1, 3, 4], et: [4]}``): one binary channel per region.
"""

from __future__ import annotations

import numpy as np

from medfed.datasets.imaging.geometry import resample_onto
from medfed.datasets.imaging.volume import Volume
from medfed.errors import MedFedError

NORMALIZERS = ("percentile", "zscore")


def same_grid(a: Volume, b: Volume) -> bool:
    """Same shape and voxel-to-world mapping (to DICOM's decimal precision)."""
    return a.shape == b.shape and np.allclose(a.affine, b.affine, atol=0.05, rtol=1e-3)


def grid_note(volumes: list[Volume], names: list[str]) -> str:
    """'' when every channel is on the first one's grid; else which one is not, and how."""
    first = volumes[0]
    for volume, name in zip(volumes[1:], names[1:], strict=False):
        if not same_grid(first, volume):
            spacing = "x".join(f"{s:.3g}" for s in volume.spacing)
            base = "x".join(f"{s:.3g}" for s in first.spacing)
            return (f"sequence {name!r} is on another grid ({'x'.join(map(str, volume.shape))}"
                    f" at {spacing} mm) than {names[0]!r} ({'x'.join(map(str, first.shape))} "
                    f"at {base} mm)")
    return ""


def stack_channels(volumes: list[Volume], names: list[str], resample: bool,
                   where: str) -> np.ndarray:
    """(C, X, Y[, Z]) float32 on the first channel's grid; another grid is resampled onto it
    when ``resample`` (``spacing`` set), else an error with the fix."""
    first = volumes[0]
    arrays = []
    for volume, name in zip(volumes, names, strict=True):
        if volume is first or same_grid(first, volume):
            arrays.append(volume.array)
        elif resample:
            arrays.append(resample_onto(volume.array, volume.affine, first.affine, first.shape))
        else:
            raise MedFedError(f"{where}: {grid_note([first, volume], [names[0], name])}; set "
                              "dataset.options.spacing to resample every sequence onto the "
                              "first one's grid, or re-export them co-registered")
    return np.stack(arrays).astype(np.float32, copy=False)


def parse_mask_labels(mask_labels: dict | None) -> dict[str, list[int]] | None:
    """``{region: [raw values]}`` checked; None when not set."""
    if not mask_labels:
        return None
    if not isinstance(mask_labels, dict):
        raise MedFedError("dataset.options.mask_labels: give a mapping of region names to raw "
                          "mask values, e.g. {wt: [1, 2, 3, 4], tc: [1, 3, 4], et: [4]}")
    regions = {}
    for name, values in mask_labels.items():
        values = [values] if isinstance(values, int | float | str) else list(values or [])
        try:
            regions[str(name)] = sorted({int(v) for v in values})
        except (TypeError, ValueError):
            raise MedFedError(f"dataset.options.mask_labels.{name}: {values!r} is not a list of "
                              "integer mask values") from None
        if not regions[str(name)] or min(regions[str(name)]) < 1:
            raise MedFedError(f"dataset.options.mask_labels.{name}: give raw mask values >= 1 "
                              "(0 is background)")
        if any(c in str(name) for c in ",:") or not str(name).strip():
            raise MedFedError(f"dataset.options.mask_labels: region name {name!r} may not be "
                              "empty or contain ',' or ':'")
    return regions


def region_masks(mask: np.ndarray, regions: dict[str, list[int]]) -> np.ndarray:
    """(1, *spatial) raw label mask -> (R, *spatial) int64, channel r = 1 inside region r."""
    raw = np.asarray(mask)[0]
    return np.stack([np.isin(raw, values) for values in regions.values()]).astype(np.int64)


def crop_foreground(image: np.ndarray, mask: np.ndarray | None, margin: int = 2
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """Crop (C, *spatial) to the box of voxels above 0 in any channel (MONAI CropForegroundd),
    the mask with it; an image with no such voxel is returned whole."""
    from monai.transforms import CropForegroundd

    if not (image > 0).any():
        return image, mask
    keys = ["image", "label"] if mask is not None else ["image"]
    data = {"image": image, **({"label": mask} if mask is not None else {})}
    out = CropForegroundd(keys, source_key="image", margin=margin, allow_smaller=True)(data)
    cropped = np.asarray(out["image"], dtype=np.float32)
    return cropped, None if mask is None else np.asarray(out["label"])
