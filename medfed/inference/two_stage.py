"""Two-stage pipelines: segment, crop the region (with a margin), classify the crop.

As in the breast-MRI example (a segmentation UNet, then a malignancy classifier): `medfed
predict SEG_MODEL DATA --then CLS_MODEL` scores each study's region, and `medfed crops`
writes the first stage's crops as a site folder to train the second stage on
(configs/two-stage-classifier.yaml). A study where the first stage finds no region is
classified whole, in both, so training and use see the same kind of input.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfed.datasets.imaging.volume import Volume
from medfed.inference.bundle import ModelBundle
from medfed.inference.inputs import check_volume, iter_studies, prepare, study_list
from medfed.inference.predict import class_columns, mask_on_grid, study_row
from medfed.io import atomic_write_bytes, atomic_write_text

Progress = Callable[[int, int], None]


def region_box(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """The bounding box of ``mask > 0`` grown by ``margin`` voxels (clipped), or None."""
    points = np.argwhere(mask > 0)
    if len(points) == 0:
        return None
    low = np.maximum(points.min(axis=0) - margin, 0)
    high = np.minimum(points.max(axis=0) + 1 + margin, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))


def crop_volume(volume: Volume, box: tuple[slice, ...] | None) -> Volume:
    """The box of ``volume`` as a volume of its own, placed where it was (affine shifted)."""
    if box is None:
        return volume
    affine = volume.affine.copy()
    start = np.array([s.start for s in box] + [0] * (3 - len(box)), float)[:3]
    affine[:3, 3] = volume.affine[:3, :3] @ start + volume.affine[:3, 3]
    return Volume(np.ascontiguousarray(volume.array[box]), affine, volume.modality,
                  volume.fmt, None, volume.orientation)


def segment(seg: ModelBundle, study) -> np.ndarray:
    from medfed.federation.train import predict

    labels = predict(seg.model, study.x, seg.task)
    return mask_on_grid(seg, labels, study.volume.shape)


def classify(cls: ModelBundle, crop: Volume, where: str) -> np.ndarray:
    """Class scores of one cropped volume: (K,) multiclass or (1,) binary."""
    from medfed.federation.train import predict

    check_volume(cls, crop, where)
    x, _ = prepare(cls, crop, None)
    return predict(cls.model, x, cls.task).mean(axis=0)


def predict_two_stage(seg: ModelBundle, cls: ModelBundle, path: Path, out: Path,
                      margin: int, progress: Progress | None = None) -> dict[str, Any]:
    """predictions.csv: the first stage's mask (and DICOM-SEG), the crop box, the second
    stage's scores and label at its threshold."""
    from medfed.errors import MedFedError

    if seg.task_name != "segmentation" or not cls.is_image or cls.task_name not in (
            "binary", "multiclass"):
        raise MedFedError(f"--then: the first model must segment and the second classify "
                          f"images (got {seg.task_name}, then {cls.task_name}); pass "
                          "SEGMENTATION_MODEL DATA --then CLASSIFIER_MODEL")
    studies = study_list(path, labelled=False)
    rows = []
    for i, study in enumerate(iter_studies(seg, studies, labelled=False)):
        from medfed.federation.train import predict

        labels = predict(seg.model, study.x, seg.task)
        row = study_row(seg, study, labels, out)
        box = region_box(mask_on_grid(seg, labels, study.volume.shape), margin)
        scores = classify(cls, crop_volume(study.volume, box), f"study {study.id}")
        scores = scores[None] if cls.task_name == "multiclass" else scores.reshape(1)
        row["region"] = "whole study" if box is None else " ".join(
            f"{s.start}:{s.stop}" for s in box)
        for key, value in class_columns(cls, scores).items():
            row[key] = value[0] if isinstance(value, np.ndarray) else value
        rows.append(row)
        if progress:
            progress(i + 1, len(studies))
    atomic_write_text(out / "predictions.csv", pd.DataFrame(rows).to_csv(index=False))
    return {"rows": len(rows)}


def write_crop_site(seg: ModelBundle, site: Path, out: Path, margin: int,
                    progress: Progress | None = None) -> dict[str, Any]:
    """A site folder of the first stage's crops: images/<id>.nii.gz + manifest.csv (label and
    split copied from the source manifest) + labels.txt when the source has one."""
    from medfed.datasets.imaging.manifest import manifest_rows, read_manifest

    label_column = "label"
    frame = read_manifest(site, label_column)
    rows = manifest_rows(site, frame, label_column)
    studies = study_list(site, labelled=True, label_column=label_column)
    records, empty = [], 0
    for i, (study, row) in enumerate(zip(iter_studies(seg, [(s[0], s[1], None) for s in studies],
                                                      labelled=False), rows, strict=True)):
        box = region_box(segment(seg, study), margin)
        empty += box is None
        crop = crop_volume(study.volume, box)
        name = f"images/{study.id}.nii.gz"
        atomic_write_bytes(out / name, nifti_bytes_float(crop))
        records.append({"patient_id": row.patient_id, "image": name, label_column: row.label,
                        **({"split": row.split} if row.split else {})})
        if progress:
            progress(i + 1, len(studies))
    atomic_write_text(out / "manifest.csv", pd.DataFrame(records).to_csv(index=False))
    if (site / "labels.txt").is_file():
        atomic_write_text(out / "labels.txt", (site / "labels.txt").read_text())
    return {"rows": len(records), "empty": empty}


def nifti_bytes_float(volume: Volume) -> bytes:
    """A crop in its modality units (e.g. HU) as gzipped NIfTI on its own grid."""
    import gzip

    import nibabel as nib

    image = nib.Nifti1Image(volume.array.astype(np.float32), volume.affine)
    image.set_qform(volume.affine, code=1)
    image.set_sform(volume.affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)

