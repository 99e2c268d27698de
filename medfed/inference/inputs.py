"""New data made to look like the training data: tables, PhysioNet stays, imaging studies.

Accepted inputs: a CSV (or a site folder holding one), a folder of PhysioNet ``.psv`` stays,
a site folder with ``manifest.csv``, a DICOM series folder, a NIfTI file, or a folder of
NIfTI files / DICOM series. Every mismatch with the model (columns, modality, dimensions,
task) is one ``MedFedError`` line naming it and the fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfed.datasets.imaging.dicom import DicomProblem, apply_window, dicom_files, resolve_window
from medfed.datasets.imaging.nifti import is_nifti, resample
from medfed.datasets.imaging.volume import Volume, load_image, load_mask
from medfed.errors import MedFedError
from medfed.inference.bundle import ModelBundle

ID_COLUMNS = ("id", "patient_id", "ID", "PatientID")


@dataclass
class Table:
    """Rows to score. ``x``: (N, F) unscaled features (or (N, L, F) sequences); ``y``: labels
    as the task expects them, or None; ``extra``: per-row columns for predictions.csv."""

    ids: list[str]
    x: np.ndarray
    y: np.ndarray | None
    extra: dict[str, list[Any]] = field(default_factory=dict)
    note: str = ""


@dataclass
class Study:
    """One imaging study: ``x`` (k, C, *spatial) preprocessed (k = 1, or slices)."""

    id: str
    x: np.ndarray
    volume: Volume
    source: Path
    y: np.ndarray | int | None = None  # mask (k, 1, *spatial) or class index


# ---------------------------------------------------------------- tables
def _raw_columns(names: list[str], categorical: list[str]) -> list[str]:
    """The CSV columns behind the model's features (one-hot columns fold back)."""
    raw = []
    for name in names:
        source = next((c for c in categorical if name.startswith(f"{c}_")), name)
        if source not in raw:
            raw.append(source)
    return raw


def model_features(bundle: ModelBundle) -> list[str]:
    """The model's input columns; f0, f1, ... (already encoded rows) when the card has no
    names (a real federation's coordinator never sees the sites' columns)."""
    return list(bundle.pre.get("feature_names") or
                [f"f{i}" for i in range(int(bundle.info.input_shape[-1]))])


def _ids(frame: pd.DataFrame, options: dict[str, Any]) -> list[str]:
    column = options.get("id_column") or next((c for c in ID_COLUMNS if c in frame.columns),
                                              None)
    if column and column in frame.columns:
        return frame[column].astype(str).tolist()
    return [str(i + 1) for i in range(len(frame))]


def _labels(bundle: ModelBundle, frame: pd.DataFrame, path: Path | str) -> np.ndarray:
    options = bundle.options
    if bundle.task_name == "survival":
        columns = [options.get("time", "time"), options.get("event", "event")]
        _require(frame, columns, path, "the survival labels")
        return frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    label = options.get("label", "label")
    _require(frame, [label], path, "the label")
    positive = options.get("positive")
    if positive is not None:
        return (frame[label].astype(str) == str(positive)).astype(np.int64).to_numpy()
    index = {c: i for i, c in enumerate(bundle.class_names)}
    values = frame[label].astype(str)
    unknown = sorted(set(values) - set(index))
    if unknown:
        raise MedFedError(f"{path}: column {label!r} has label(s) {unknown[:5]} the model does "
                          f"not know; its classes are {bundle.class_names}")
    return values.map(index).astype(np.int64).to_numpy()


def _require(frame: pd.DataFrame, columns: list[str], path: Path | str, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MedFedError(f"{path}: missing column(s) {missing} ({what}); add them with the "
                          f"names used at training (columns here: {list(frame.columns)[:8]})")


def csv_table(bundle: ModelBundle, path: Path, labelled: bool) -> Table:
    """A CSV through the model's feature list: one-hot as at training, same column order."""
    from medfed.datasets.clinical.csv_table import read_table

    return frame_table(bundle, read_table(path), path, labelled)


def frame_table(bundle: ModelBundle, frame: pd.DataFrame, path: Path | str,
                labelled: bool) -> Table:
    """Rows of a data frame (a CSV, or a served request) as the model's features."""
    names = model_features(bundle)
    options = bundle.options
    raw = _raw_columns(names, list(options.get("categorical") or []))
    categorical = [c for c in options.get("categorical") or [] if c in raw]
    _require(frame, raw, path, f"the model's {len(names)} features")
    keep = frame[raw].notna().all(axis=1).to_numpy().copy()
    if labelled:
        y_all = _labels(bundle, frame, path)
        keep &= ~pd.isna(y_all).reshape(len(frame), -1).any(axis=1)
    kept = frame.loc[keep]
    x = pd.get_dummies(kept[raw], columns=categorical or None, dtype=np.float32)
    x = x.reindex(columns=names, fill_value=0.0)
    try:
        values = x.to_numpy(np.float32)
    except (TypeError, ValueError):
        bad = [c for c in x.columns if not pd.api.types.is_numeric_dtype(x[c])]
        raise MedFedError(f"{path}: non-numeric column(s) {bad}; the model expects numbers "
                          "there") from None
    dropped = int((~keep).sum())
    return Table(_ids(kept, options), values, y_all[keep] if labelled else None,
                 note=f"{dropped} row(s) with a missing value skipped" if dropped else "")


def site_loader_table(bundle: ModelBundle, path: Path) -> Table:
    """A site folder read by the dataset's own ``load_site`` (labels required)."""
    from medfed.datasets.site_folder import site_dataset, site_path

    spec = site_dataset(bundle.pre["dataset"])
    data = spec.load_site(site_path(path, spec), bundle.options,
                          test_fraction=bundle.cfg.partition.test_fraction,
                          seed=bundle.cfg.partition_seed)
    names = bundle.pre.get("feature_names")
    if names and list(data.feature_names) != list(names):
        raise MedFedError(f"{path}: features {data.feature_names[:5]}... differ from the "
                          f"model's {names[:5]}...; export the same columns as at training")
    return Table([str(i + 1) for i in range(len(data.y))], data.x, data.y)


def table_input(bundle: ModelBundle, path: Path, labelled: bool) -> Table:
    """Tabular rows from a CSV or a site folder."""
    if bundle.task_name == "timeseries":
        return stays_table(bundle, path)
    from medfed.datasets.site_folder import table_file

    file = table_file(path)
    if file.suffix.lower() in (".csv", ".tsv"):
        try:
            return csv_table(bundle, file, labelled)
        except MedFedError as first:
            if not _has_site_loader(bundle):
                raise
            try:
                return site_loader_table(bundle, path)
            except MedFedError:
                raise first from None
    if _has_site_loader(bundle):
        return site_loader_table(bundle, path)
    raise MedFedError(f"{file}: not a CSV; export the table as comma-separated CSV with a "
                      "header row")


def _has_site_loader(bundle: ModelBundle) -> bool:
    from medfed.datasets import DATASETS, get_dataset

    name = bundle.pre["dataset"]
    return name in DATASETS and get_dataset(name).load_site is not None


# ---------------------------------------------------------------- PhysioNet stays
def stays_table(bundle: ModelBundle, path: Path) -> Table:
    """A folder of ``.psv`` stays -> hourly rows, featurised by the dataset's own loader with
    the model's options (so new stays get exactly the training features)."""
    from medfed.datasets import get_dataset
    from medfed.datasets.timeseries.sepsis import site_folders

    path = Path(path)
    if not path.is_dir() or not any(path.rglob("*.psv")):
        raise MedFedError(f"{path}: no .psv files; a sepsis model reads a folder of PhysioNet "
                          "2019 stays (one .psv per stay)")
    options = {k: v for k, v in bundle.options.items()
               if k not in ("path", "demo_patients", "max_stays", "download_missing")}
    with np.errstate(invalid="ignore", divide="ignore"):  # training weights: unused here
        data = get_dataset(bundle.pre["dataset"]).load_federation(
            path=str(path), download_missing=False, **options)
    wanted = bundle.pre.get("feature_names")
    if wanted and list(data.feature_names) != list(wanted):
        raise MedFedError(f"{path}: {len(data.feature_names)} hourly features differ from the "
                          f"model's {len(wanted)}; give stays with the PhysioNet 2019 columns")
    names = [p.stem for _, folder in site_folders(path) for p in sorted(folder.glob("*.psv"))]
    stays = data.y[:, 1].astype(int)
    return Table([names[s] for s in stays], data.x, data.y,
                 extra={"hour": data.y[:, 2].astype(int).tolist()})


# ---------------------------------------------------------------- imaging
def _manifest_studies(root: Path, labelled: bool, segmentation: bool, label_column: str
                      ) -> list[tuple[str, Path, Any]]:
    from medfed.datasets.imaging.manifest import manifest_rows, read_manifest

    rows = manifest_rows(root, read_manifest(root, label_column), label_column)
    out = []
    for row in rows:
        if labelled and segmentation and row.mask is None:
            raise MedFedError(f"{root}/manifest.csv row {row.number}: no mask; validating a "
                              "segmentation model needs a mask path in every row")
        if labelled and not segmentation and row.label is None:
            raise MedFedError(f"{root}/manifest.csv row {row.number}: no label; add the "
                              f"{label_column!r} column to validate")
        out.append((f"{row.patient_id}" if len(rows) == len({r.patient_id for r in rows})
                    else f"{row.patient_id}-{row.number}", row.image,
                    row.mask if segmentation else row.label))
    return out


def study_list(path: Path, labelled: bool, segmentation: bool = False,
               label_column: str = "label") -> list[tuple[str, Path, Any]]:
    """(id, image path, mask path or label) of each study under ``path``."""
    path = Path(path)
    if not path.exists():
        raise MedFedError(f"{path}: not found; pass a site folder, DICOM series folder or "
                          "NIfTI file")
    if path.is_file():
        if not is_nifti(path) and path.suffix.lower() not in (".dcm", ""):
            raise MedFedError(f"{path}: an imaging model reads NIfTI (.nii/.nii.gz) or DICOM, "
                              f"not {path.suffix}; give the study in one of those")
        return [(path.name.split(".")[0], path, None)]
    if (path / "manifest.csv").is_file():
        return _manifest_studies(path, labelled, segmentation, label_column)
    if labelled:
        raise MedFedError(f"{path}: validation needs labels: a site folder with manifest.csv "
                          "(image, label or mask columns)")
    entries = sorted(path.iterdir())
    studies = [(p.name.split(".")[0], p, None) for p in entries
               if is_nifti(p) or (p.is_dir() and dicom_files(p))]
    if not studies and dicom_files(path):  # the folder is one DICOM series
        return [(path.name, path, None)]
    if not studies:
        raise MedFedError(f"{path}: no NIfTI files or DICOM series here; pass a site folder, "
                          "a series folder or NIfTI files")
    return studies


def check_volume(bundle: ModelBundle, volume: Volume, where: str) -> None:
    """Refuse a study of another modality or dimension than the model's."""
    imaging = bundle.pre.get("imaging") or {}
    spatial = imaging.get("spatial_size") or list(bundle.info.input_shape[1:])
    wanted = imaging.get("modality")
    if wanted and wanted != "NIfTI" and volume.fmt == "dicom" and volume.modality != wanted:
        raise MedFedError(f"{where}: a {volume.modality} series but the model was trained on "
                          f"{wanted}; give a {wanted} series (or use a model trained on "
                          f"{volume.modality})")
    dims = len(spatial)
    squeezed = sum(1 for s in volume.shape if s > 1)
    if dims == 3 and squeezed < 3:
        raise MedFedError(f"{where}: a 2D image {volume.shape} but the model takes 3D volumes "
                          f"({spatial}); give the whole series (a folder of slices)")
    if dims == 2 and squeezed == 3 and not imaging.get("as_slices"):
        raise MedFedError(f"{where}: a 3D volume {volume.shape} but the model takes 2D images "
                          f"({spatial}); give one slice, or use a model trained on volumes")


def prepare(bundle: ModelBundle, volume: Volume, mask: np.ndarray | None
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """The training preprocessing (spacing, window, resize; slices) of one study."""
    from medfed.datasets.imaging.site_folders import preprocess

    imaging = bundle.pre.get("imaging") or {}
    image = volume.array
    if imaging.get("spacing"):
        target = tuple(imaging["spacing"])
        image = resample(image, volume.spacing, target)
        mask = None if mask is None else resample(mask, volume.spacing, target, nearest=True)
    window = resolve_window(imaging.get("window"))
    size = tuple(imaging.get("spatial_size") or bundle.info.input_shape[1:])
    if imaging.get("as_slices") and image.ndim == 3:
        axis = int(imaging.get("slice_axis", 2))
        pairs = [preprocess(np.take(image, k, axis), None if mask is None else
                            np.take(mask, k, axis), size, window)
                 for k in range(image.shape[axis])]
        return (np.stack([p[0] for p in pairs]),
                None if mask is None else np.stack([p[1] for p in pairs]))
    if image.ndim == 3 and len(size) == 2:
        image = np.squeeze(image, axis=image.shape.index(1))
        mask = None if mask is None else np.squeeze(mask, axis=mask.shape.index(1))
    x, y = preprocess(image, mask, size, window)
    return x[None], None if y is None else y[None]


def iter_studies(bundle: ModelBundle, studies: list[tuple[str, Path, Any]],
                 labelled: bool) -> Iterator[Study]:
    """Each study read, checked and preprocessed, one at a time (bounded memory)."""
    segmentation = bundle.task_name == "segmentation"
    index = {c: i for i, c in enumerate(bundle.class_names)}
    imaging = bundle.pre.get("imaging") or {}
    for study_id, image_path, target in studies:
        where = f"study {study_id} ({image_path})"
        try:
            volume = load_image(image_path, imaging.get("series_uid"),
                                imaging.get("volume_index"))
            check_volume(bundle, volume, where)
            mask = load_mask(target, volume) if labelled and segmentation else None
        except DicomProblem as exc:
            raise MedFedError(f"{where}: {exc}") from None
        x, y = prepare(bundle, volume, mask)
        label = None
        if labelled and not segmentation:
            if str(target) not in index:
                raise MedFedError(f"{where}: label {target!r} is not one of the model's classes "
                                  f"{bundle.class_names}")
            label = index[str(target)]
        yield Study(study_id, x, volume, Path(image_path), y if segmentation else label)


def windowed(volume: Volume, window: Any) -> np.ndarray:
    """The study's pixels in [0, 1] for display (the model's window, else percentiles)."""
    resolved = resolve_window(window)
    if resolved is not None:
        return apply_window(volume.array, resolved)
    lo, hi = np.percentile(volume.array, [0.5, 99.5])
    return np.clip((volume.array - lo) / max(hi - lo, 1e-6), 0, 1)


def input_kind(path: Path) -> str:
    """What ``path`` holds: "stays" (.psv), "imaging" (DICOM/NIfTI/manifest) or "table"."""
    path = Path(path)
    if path.is_file():
        if is_nifti(path) or path.suffix.lower() == ".dcm":
            return "imaging"
        return "stays" if path.suffix.lower() == ".psv" else "table"
    if not path.is_dir():
        raise MedFedError(f"{path}: not found; pass a file or folder of new data")
    if (path / "manifest.csv").is_file():
        return "imaging"
    if any(path.glob("*.psv")) or any(path.glob("*/*.psv")):
        return "stays"
    if any(is_nifti(p) for p in path.iterdir()) or dicom_files(path) or any(
            p.is_dir() and (dicom_files(p) or any(is_nifti(q) for q in p.iterdir()))
            for p in path.iterdir()):
        return "imaging"
    return "table"


KIND_OF_TASK = {"timeseries": "stays"}
KIND_WORDS = {"stays": "PhysioNet .psv stays", "imaging": "images (DICOM/NIfTI)",
              "table": "a table (CSV)"}


def check_input(bundle: ModelBundle, path: Path) -> None:
    """Refuse input of another kind than the model's task takes, naming both and the fix."""
    if bundle.cfg.model.name == "multimodal":
        raise MedFedError(f"{bundle.folder}: a multimodal model (image + table per patient); "
                          "predict, validate and explain take single-modality models only")
    wanted = "imaging" if bundle.is_image else KIND_OF_TASK.get(bundle.task_name, "table")
    found = input_kind(path)
    if found != wanted:
        raise MedFedError(f"{path}: holds {KIND_WORDS[found]} but the model "
                          f"({bundle.task_name}, {bundle.pre['dataset']}) takes "
                          f"{KIND_WORDS[wanted]}; pass such data or a model for this data")
