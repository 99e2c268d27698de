"""`medfed predict`: scores per row / study, masks on the original grid, DICOM-SEG, alarms.

Outputs in ``out``: ``predictions.csv`` (id, a score per class, the label predicted at the
model's operating threshold, that threshold); segmentation: ``masks/<id>.nii.gz`` on the
study's own voxel grid and, for DICOM input, ``seg/<id>.dcm`` (DICOM-SEG referencing the
source series); sepsis: one row per stay-hour with its score and alarm.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfed.federation.train import predict
from medfed.inference.bundle import ModelBundle
from medfed.inference.inputs import Study, Table, iter_studies, study_list, table_input
from medfed.io import atomic_write_bytes, atomic_write_text

Progress = Callable[[int, int], None]


def score_rows(bundle: ModelBundle, x: np.ndarray) -> np.ndarray:
    """Model scores of unscaled rows: (N,) binary/risk, (N, K) multiclass."""
    return predict(bundle.model, bundle.scale(x), bundle.task)


def class_columns(bundle: ModelBundle, scores: np.ndarray) -> dict[str, Any]:
    """score_<class> per class, the predicted label and the threshold used."""
    names = bundle.class_names
    if bundle.task_name == "timeseries":  # hourly risk; the alarm columns follow
        threshold = bundle.threshold if bundle.threshold is not None else 0.5
        return {"score": scores, "above_threshold": scores >= threshold, "threshold": threshold}
    if bundle.task_name == "binary":
        threshold = bundle.threshold if bundle.threshold is not None else 0.5
        return {f"score_{names[0]}": 1.0 - scores, f"score_{names[-1]}": scores,
                "predicted": np.where(scores >= threshold, names[-1], names[0]),
                "threshold": threshold}
    if bundle.task_name == "multiclass":
        columns: dict[str, Any] = {f"score_{n}": scores[:, i] for i, n in enumerate(names)}
        return {**columns, "predicted": np.asarray(names)[scores.argmax(1)],
                "threshold": "argmax"}
    return {"risk": scores, "predicted": "", "threshold": ""}  # survival: a risk ranking


def table_frame(bundle: ModelBundle, table: Table, scores: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({"id": table.ids, **table.extra})
    for key, value in class_columns(bundle, scores).items():
        frame[key] = value
    if bundle.task_name == "timeseries":
        frame["alarm"], frame["in_alarm"] = stay_alarm_columns(bundle, table, scores)
    return frame


def stay_alarm_columns(bundle: ModelBundle, table: Table, scores: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Per hour: does an alarm fire (dwell and cooldown of the model's policy), is it on."""
    from medfed.tasks.timeseries import policy_of, stay_alarms, stays_of

    policy = policy_of(bundle.pre.get("alarm"))
    threshold = bundle.threshold if bundle.threshold is not None else 0.5
    fired, on = np.zeros(len(scores), bool), np.zeros(len(scores), bool)
    for rows in stays_of(table.y):
        hours, in_alarm = stay_alarms(scores[rows], threshold, policy["dwell"],
                                      policy["cooldown"])
        fired[rows[hours]] = True
        on[rows] = in_alarm
    return fired, on


def predict_table(bundle: ModelBundle, path: Path, out: Path) -> dict[str, Any]:
    table = table_input(bundle, path, labelled=bundle.task_name == "timeseries")
    scores = score_rows(bundle, table.x)
    frame = table_frame(bundle, table, scores)
    atomic_write_text(out / "predictions.csv", frame.to_csv(index=False))
    summary = {"rows": len(frame), "note": table.note}
    if bundle.task_name == "timeseries":
        summary["stays"] = int(frame["id"].nunique())
        summary["alarms"] = int(frame["alarm"].sum())
    return summary


# ---------------------------------------------------------------- imaging
def study_scores(bundle: ModelBundle, study: Study) -> np.ndarray:
    """(K,) class scores of a study (slices averaged) or its label map (k, 1, *spatial)."""
    scores = predict(bundle.model, study.x, bundle.task)
    if bundle.task_name == "segmentation":
        return scores
    return scores.mean(axis=0)


def mask_on_grid(bundle: ModelBundle, labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A predicted label map (k, 1, *spatial) back onto the study's voxel grid ``shape``."""
    from monai.transforms import Resize

    imaging = bundle.pre.get("imaging") or {}
    if labels.shape[0] > 1:  # slices of a 3D study, stacked back along their axis
        array = np.stack([s[0] for s in labels], axis=int(imaging.get("slice_axis", 2)))
    else:
        array = labels[0, 0]
    if array.ndim < len(shape):
        array = array.reshape([n if n == 1 else -1 for n in shape]) if 1 in shape else array
    resized = Resize(tuple(shape), mode="nearest")(array[None].astype(np.float32))
    return np.rint(np.asarray(resized)[0]).astype(np.uint8)


def nifti_bytes(mask: np.ndarray, affine: np.ndarray) -> bytes:
    import nibabel as nib

    image = nib.Nifti1Image(np.ascontiguousarray(mask.astype(np.uint8)), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


def ras_to_dicom(mask: np.ndarray, dicom_affine: np.ndarray) -> np.ndarray:
    """Inverse of ``dicom_to_ras``: a RAS (X, Y, Z) mask -> DICOM (slices, rows, cols)."""
    from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

    volume = mask if mask.ndim == 3 else mask[..., None]
    ornt = io_orientation(dicom_affine)
    back = ornt_transform(np.array([[0, 1], [1, 1], [2, 1]]), ornt)
    return np.transpose(apply_orientation(volume, back), (2, 1, 0))


def source_datasets(study: Study) -> list:
    """The study's DICOM datasets in the order of its slices (``DicomImage.sop_uids``)."""
    import pydicom

    from medfed.datasets.imaging.dicom import dicom_files

    files = dicom_files(study.source) if study.source.is_dir() else [study.source]
    by_uid = {}
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet  # empty in some scanners' files; highdicom refuses ''
        by_uid[str(ds.SOPInstanceUID)] = ds
    return [by_uid[uid] for uid in study.volume.dicom.sop_uids]


def dicom_seg_bytes(bundle: ModelBundle, study: Study, mask: np.ndarray) -> bytes:
    """A DICOM-SEG (highdicom) of ``mask`` referencing every slice of the source series."""
    import io
    import warnings

    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from medfed import __version__

    pixels = ras_to_dicom(mask, study.volume.dicom.affine).astype(np.uint8)
    n_labels = max(bundle.info.n_classes - 1, 1)
    names = bundle.class_names
    descriptions = [hd.seg.SegmentDescription(
        segment_number=k, segment_label=names[k] if k < len(names) else f"label {k}",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=f"medfed {bundle.card.get('name', 'model')}", version=__version__,
            family=codes.DCM.ArtificialIntelligence)) for k in range(1, n_labels + 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.Segmentation(
            source_images=source_datasets(study), pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=generate_uid(),
            series_number=900, sop_instance_uid=generate_uid(), instance_number=1,
            manufacturer="MedFed", manufacturer_model_name=str(bundle.card.get("name")),
            software_versions=__version__, device_serial_number="0",
            omit_empty_frames=False)
    buffer = io.BytesIO()
    seg.save_as(buffer)
    return buffer.getvalue()


def study_row(bundle: ModelBundle, study: Study, scores: np.ndarray, out: Path
              ) -> dict[str, Any]:
    """Write the study's outputs; its predictions.csv row."""
    if bundle.task_name != "segmentation":
        row = {"id": study.id}
        for key, value in class_columns(bundle, np.asarray(scores)[None] if
                                        bundle.task_name == "multiclass" else
                                        np.asarray([scores]).reshape(1)).items():
            row[key] = value[0] if isinstance(value, np.ndarray) else value
        return row
    mask = mask_on_grid(bundle, scores, study.volume.shape)
    atomic_write_bytes(out / "masks" / f"{study.id}.nii.gz",
                       nifti_bytes(mask, study.volume.affine))
    row = {"id": study.id, "mask": f"masks/{study.id}.nii.gz",
           **{f"voxels_{k}": int((mask == k).sum()) for k in range(1, bundle.info.n_classes)}}
    if study.volume.dicom is not None and study.volume.dicom.sop_uids:
        atomic_write_bytes(out / "seg" / f"{study.id}.dcm", dicom_seg_bytes(bundle, study, mask))
        row["dicom_seg"] = f"seg/{study.id}.dcm"
    return row


def predict_studies(bundle: ModelBundle, path: Path, out: Path,
                    progress: Progress | None = None) -> dict[str, Any]:
    """Stream the studies one at a time: read, preprocess, predict, write."""
    studies = study_list(path, labelled=False)
    rows = []
    for i, study in enumerate(iter_studies(bundle, studies, labelled=False)):
        rows.append(study_row(bundle, study, study_scores(bundle, study), out))
        if progress:
            progress(i + 1, len(studies))
    atomic_write_text(out / "predictions.csv", pd.DataFrame(rows).to_csv(index=False))
    return {"rows": len(rows)}


def predict_any(bundle: ModelBundle, path: Path, out: Path,
                progress: Progress | None = None) -> dict[str, Any]:
    """Predictions for whatever ``path`` holds, in the form the model's task needs."""
    out.mkdir(parents=True, exist_ok=True)
    if bundle.is_image:
        return predict_studies(bundle, path, out, progress)
    return predict_table(bundle, path, out)
