"""Multimodal site folders: images (``manifest.csv``) joined per ``patient_id`` to clinical data.

A site folder is an imaging site folder whose ``manifest.csv`` may also hold clinical columns,
plus an optional ``clinical.csv`` (``patient_id``, the clinical columns, ``label`` and optional
``split`` for patients without a manifest row). A manifest row with an empty ``image`` is a
patient without a scan; a folder whose rows all lack images is a clinical-only site. One
sample per patient: a duplicated ``patient_id`` is an error.

Options: ``roots`` (site folders; or ``path``: every ``site-*`` folder under it), ``clinical``
(``numeric: [..]`` and ``categorical: [..]`` or ``{column: [categories]}``), ``spatial_size``,
``window``, ``labels``, ``label_column``, ``test_fraction``, ``seed``, ``cache_dir``,
``channels`` (image channels; needed by a clinical-only hospital of an RGB federation), and
``demo`` (``{sites, patients, missing_image, clinical_only_sites, size}``: demo data written
to ``path`` when it holds no site folder yet).

Each sample is one packed float32 row ``[image (C*H*W) | clinical (F) | has_image |
has_clinical]`` (see ``medfed.models.multimodal``). Numeric clinical columns are standardised
PER SITE with that site's training patients only (no pooling, no test leakage); a missing
value becomes the site's mean (0); a missing category is all-zero one-hot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfed.datasets.base import Dataset, TableDataset
from medfed.datasets.imaging.manifest import (
    MANIFEST,
    Row,
    is_number,
    manifest_rows,
    read_manifest,
)
from medfed.errors import MedFedError

CLINICAL_FILE = "clinical.csv"
PICTURES = (".jpg", ".jpeg", ".png")


@dataclass
class ClinicalSpec:
    numeric: list[str]
    categorical: dict[str, list[str] | None]  # None: categories from the data (sorted union)

    @property
    def columns(self) -> list[str]:
        return self.numeric + list(self.categorical)


def clinical_spec(clinical: dict[str, Any] | None) -> ClinicalSpec:
    """``dataset.options.clinical`` -> the declared columns and their kinds."""
    clinical = clinical or {}
    unknown = sorted(set(clinical) - {"numeric", "categorical"})
    if unknown or not clinical:
        raise MedFedError("dataset.options.clinical: declare the clinical columns as "
                          "{numeric: [age, ...], categorical: [sex, ...]}"
                          + (f" (unknown keys {unknown})" if unknown else ""))
    cats = clinical.get("categorical") or {}
    if isinstance(cats, list):
        cats = {str(c): None for c in cats}
    return ClinicalSpec([str(c) for c in clinical.get("numeric") or []],
                        {str(k): None if v is None else [str(c) for c in v]
                         for k, v in cats.items()})


@dataclass
class Patient:
    """One joined sample: its manifest row (None: no image), clinical cells, label, split."""

    patient_id: str
    row: Row | None
    clinical: dict[str, str | None] | None
    label: str
    split: str | None


def _cell(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def read_clinical(site_dir: Path) -> pd.DataFrame | None:
    path = Path(site_dir) / CLINICAL_FILE
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=["", "NA", "?"])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise MedFedError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]}); save it "
                          "as comma-separated UTF-8 with a header row") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if "patient_id" not in frame.columns:
        raise MedFedError(f"{path}: no patient_id column; the clinical table is joined to the "
                          "images by patient_id")
    return frame


def join_problems(site_dir: Path, spec: ClinicalSpec, label_column: str = "label",
                  allowed_roots: list[str] | None = None
                  ) -> tuple[list[Patient], list[tuple[int | None, str]]]:
    """Join manifest rows and clinical rows per patient; also every problem found (row, text).

    Problems: a declared clinical column in neither file, a duplicated patient_id, a
    non-numeric value in a numeric column, no label, labels that disagree.
    """
    site_dir = Path(site_dir)
    frame = read_manifest(site_dir, label_column)
    rows = manifest_rows(site_dir, frame, label_column, allowed_roots or [])
    records = frame.to_dict("records")
    clinical = read_clinical(site_dir)
    problems: list[tuple[int | None, str]] = []
    have = set(frame.columns) | (set(clinical.columns) if clinical is not None else set())
    for column in spec.columns:
        if column not in have:
            problems.append((None, f"clinical column {column!r} (declared in dataset.options."
                             f"clinical) is in neither {MANIFEST} nor {CLINICAL_FILE}; add it "
                             "or remove it from the config"))
    patients: dict[str, Patient] = {}
    for row, record in zip(rows, records, strict=True):
        if not row.patient_id:
            problems.append((row.number, f"{MANIFEST}: no patient_id"))
            continue
        if row.patient_id in patients:
            problems.append((row.number, f"{MANIFEST}: patient {row.patient_id} is duplicated "
                             "(one row per patient in a multimodal site)"))
            continue
        cells = {c: _cell(record.get(c)) for c in spec.columns if c in frame.columns}
        patients[row.patient_id] = Patient(
            row.patient_id, row if row.image is not None else None,
            cells if any(v is not None for v in cells.values()) else None,
            row.label or "", row.split)
    if clinical is not None:
        _join_clinical(clinical, spec, label_column, patients, problems)
    for patient in patients.values():
        if not patient.label:
            problems.append((None, f"patient {patient.patient_id}: no {label_column!r} in "
                             f"{MANIFEST} or {CLINICAL_FILE}"))
        for column in spec.numeric:
            value = (patient.clinical or {}).get(column)
            if value is not None and not is_number(value):
                problems.append((None, f"patient {patient.patient_id}: {column}={value!r} is "
                                 "not a number; fix it or leave it empty (missing)"))
    return list(patients.values()), problems


def _join_clinical(clinical: pd.DataFrame, spec: ClinicalSpec, label_column: str,
                   patients: dict[str, Patient], problems: list) -> None:
    seen: set[str] = set()
    for number, record in enumerate(clinical.to_dict("records"), start=1):
        pid = _cell(record.get("patient_id"))
        if pid is None:
            problems.append((number, f"{CLINICAL_FILE}: no patient_id"))
            continue
        if pid in seen:
            problems.append((number, f"{CLINICAL_FILE}: patient {pid} is duplicated (one "
                             "clinical row per patient)"))
            continue
        seen.add(pid)
        cells = {c: _cell(record.get(c)) for c in spec.columns if c in clinical.columns}
        label = _cell(record.get(label_column)) or ""
        patient = patients.get(pid)
        if patient is None:  # a patient with a clinical row and no image
            patients[pid] = Patient(pid, None, cells, label,
                                    (_cell(record.get("split")) or "").lower() or None)
            continue
        if label and patient.label and label != patient.label:
            problems.append((number, f"{CLINICAL_FILE}: patient {pid} has label {label!r} but "
                             f"{patient.label!r} in {MANIFEST}; make them agree"))
        patient.label = patient.label or label
        patient.clinical = {**(patient.clinical or {}),
                            **{k: v for k, v in cells.items() if v is not None}}


def read_picture(path: Path, spatial_size: tuple[int, ...]) -> np.ndarray:
    """A JPEG/PNG (e.g. dermoscopy) -> (3, H, W) float32 in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.draft("RGB", tuple(int(s) * 2 for s in spatial_size[::-1]))  # fast JPEG decode
            small = image.convert("RGB").resize(tuple(int(s) for s in spatial_size[::-1]),
                                                Image.Resampling.BILINEAR)
    except (OSError, UnidentifiedImageError):
        raise MedFedError(f"{path.name}: unreadable image; re-export it as JPEG/PNG or drop "
                          "the row") from None
    return np.transpose(np.asarray(small, np.float32) / 255.0, (2, 0, 1))


def load_image_block(patient: Patient, params: dict[str, Any], cache: Path, where: str
                     ) -> np.ndarray:
    """The patient's preprocessed image (C, *spatial_size) via the imaging cache."""
    from medfed.datasets.imaging.site_folders import cached_row

    row = patient.row
    if row.image.suffix.lower() in PICTURES and row.image.is_file():
        return read_picture(row.image, tuple(params["spatial_size"]))
    x, _, _ = cached_row(row, params, cache, where)
    if len(x) != 1:
        raise MedFedError(f"{where}: the image gives {len(x)} samples; a multimodal sample is "
                          "one 2D image or one volume per patient (no as_slices)")
    return np.asarray(x[0], np.float32)


def _numeric(values: list[str | None]) -> np.ndarray:
    return np.asarray([np.nan if v is None else float(v) for v in values], np.float64)


def encode_clinical(patients: list[Patient], train: np.ndarray, spec: ClinicalSpec,
                    categories: dict[str, list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """(N, F) features scaled with this site's training patients, and (N,) has_clinical."""
    has = np.asarray([p.clinical is not None for p in patients], np.float32)
    blocks = []
    for column in spec.numeric:
        raw = _numeric([(p.clinical or {}).get(column) for p in patients])
        fit = raw[train & ~np.isnan(raw)]
        mean = fit.mean() if len(fit) else 0.0
        std = fit.std() if len(fit) > 1 and fit.std() > 1e-8 else 1.0
        blocks.append(np.nan_to_num((raw - mean) / std, nan=0.0)[:, None])
    for column in spec.categorical:
        values = [(p.clinical or {}).get(column) for p in patients]
        blocks.append(np.asarray([[float(v == c) for c in categories[column]] for v in values],
                                 np.float64).reshape(len(patients), -1))
    features = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(patients), 0))
    return (features * has[:, None]).astype(np.float32), has


def _site_roots(roots: list[str] | str | None, path: str | None, demo: dict | None) -> list[Path]:
    if roots:
        return [Path(r) for r in ([roots] if isinstance(roots, str) else roots)]
    if not path:
        raise MedFedError("dataset.options: give roots (site folders) or path (a folder of "
                          "site-* folders)")
    found = sorted(p for p in Path(path).glob("site-*") if (p / MANIFEST).is_file())
    if not found and demo is not None:
        from medfed.datasets.multimodal.demo import write_multimodal_sites

        found = write_multimodal_sites(Path(path), **demo)
    if not found:
        raise MedFedError(f"{path}: no site-*/{MANIFEST} folders; write demo data with "
                          f"`medfed demo-data multimodal {path}` or list dataset.options.roots")
    return found


def load(roots: list[str] | str | None = None, clinical: dict[str, Any] | None = None,
         path: str | None = None, demo: dict[str, Any] | None = None,
         spatial_size: list[int] | tuple[int, ...] = (32, 32),
         window: str | list[float] | None = None, labels: list[str] | None = None,
         label_column: str = "label", test_fraction: float = 0.3, seed: int = 42,
         cache_dir: str | None = None, channels: int | None = None,
         allowed_roots: list[str] | None = None) -> TableDataset:
    """Site folders -> packed rows ``x`` (N, C*H*W + F + 2), labels, site per row, split.

    ``allowed_roots``: folders outside the site folders that manifests may point into."""
    from medfed.datasets.imaging.site_folders import (
        _class_order,
        _site_names,
        cache_root,
        patient_split,
    )

    spec = clinical_spec(clinical)
    folders = _site_roots(roots, path, demo)
    names = _site_names(folders)
    joined = []
    for folder, name in zip(folders, names, strict=True):
        patients, problems = join_problems(folder, spec, label_column, allowed_roots)
        if problems:
            number, text = problems[0]
            where = f"row {number}: " if number else ""
            raise MedFedError(f"site {name} ({folder}): {where}{text}; run `medfed data check "
                              f"{folder} --clinical ...` to list every problem")
        if not patients:
            raise MedFedError(f"{folder}/{MANIFEST}: no patients; list the site's patients")
        joined.append(patients)
    class_names = _class_order([p.label for ps in joined for p in ps], labels)
    index = {c: i for i, c in enumerate(class_names)}
    categories = {c: cats or sorted({v for ps in joined for p in ps
                                     if (v := (p.clinical or {}).get(c)) is not None})
                  for c, cats in spec.categorical.items()}
    params = {"task": "classification", "spatial_size": [int(s) for s in spatial_size],
              "window": window, "spacing": None, "series_uid": None, "volume_index": None,
              "as_slices": False, "slice_axis": 2}
    cache = cache_root(cache_dir)
    xs, ys, groups, splits = [], [], [], []
    for patients, name in zip(joined, names, strict=True):
        unknown = sorted({p.label for p in patients} - set(index))
        if unknown:
            raise MedFedError(f"site {name}: labels {unknown} not in dataset.options.labels "
                              f"{class_names}")
        y = np.asarray([index[p.label] for p in patients], np.int64)
        chosen = patient_split([p.patient_id for p in patients if p.split not in ("train", "test")],
                               [int(v) for p, v in zip(patients, y, strict=True)
                                if p.split not in ("train", "test")], test_fraction, seed)
        split = np.asarray([p.split if p.split in ("train", "test") else chosen[p.patient_id]
                            for p in patients], dtype=object)
        features, has_clinical = encode_clinical(patients, split == "train", spec, categories)
        xs.append((patients, features, has_clinical, name))
        ys.append(y)
        groups += [name] * len(patients)
        splits.append(split)
    x = _pack(xs, params, cache, channels)
    feature_names = ["image"] + _feature_names(spec, categories) + ["has_image", "has_clinical"]
    y = np.concatenate(ys)
    return TableDataset(
        name="multimodal-sites", task="binary" if len(class_names) == 2 else "multiclass",
        x=x, y=y, feature_names=feature_names, groups=np.asarray(groups, dtype=object),
        split=np.concatenate(splits), class_names=class_names, standardize=False,
        unit="patient",  # one row per patient_id (a repeated id is refused)
        source=f"{len(folders)} multimodal site folders, {len(y)} patients, clinical scaled "
               "per site")


def _feature_names(spec: ClinicalSpec, categories: dict[str, list[str]]) -> list[str]:
    return spec.numeric + [f"{c}={v}" for c in spec.categorical for v in categories[c]]


def _pack(sites: list, params: dict, cache: Path, channels: int | None) -> np.ndarray:
    """Every site's patients -> packed rows; image shape from the first image found."""
    images: list[np.ndarray | None] = []
    for patients, _, _, name in sites:
        for patient in patients:
            where = f"site {name} patient row {patient.row.number if patient.row else '-'}"
            images.append(None if patient.row is None else
                          load_image_block(patient, params, cache, where))
    shapes = {im.shape for im in images if im is not None}
    if len(shapes) > 1:
        raise MedFedError(f"multimodal sites: images preprocess to different shapes {shapes}; "
                          "use one spatial_size and the same channels at every site")
    # a site without any image (clinical-only) still packs an image block of the right size
    shape = shapes.pop() if shapes else (channels or 1, *params["spatial_size"])
    if channels and shape[0] != channels:
        raise MedFedError(f"multimodal sites: images have {shape[0]} channel(s) but "
                          f"dataset.options.channels is {channels}; fix the option")
    n_pixels = int(np.prod(shape))
    rows = []
    at = 0
    for patients, features, has_clinical, _ in sites:
        block = np.zeros((len(patients), n_pixels + features.shape[1] + 2), np.float32)
        for i in range(len(patients)):
            image = images[at + i]
            if image is not None:
                block[i, :n_pixels] = image.reshape(-1)
                block[i, -2] = 1.0
        block[:, n_pixels:n_pixels + features.shape[1]] = features
        block[:, -1] = has_clinical
        rows.append(block)
        at += len(patients)
    return np.concatenate(rows)


def load_site(path: Path, options: dict[str, Any], *, test_fraction: float,
              seed: int) -> TableDataset:
    """A real hospital's multimodal folder as its SuperNode reads it (one site), split by
    patient as in simulation (``test_fraction``/``seed`` unless the options give them)."""
    opts = {k: v for k, v in options.items() if k not in ("roots", "path", "demo")}
    spec = clinical_spec(opts.get("clinical"))
    undeclared = [c for c, cats in spec.categorical.items() if cats is None]
    if undeclared:  # every hospital must one-hot the same way: same model input size
        raise MedFedError(f"dataset.options.clinical.categorical: list the categories of "
                          f"{undeclared} (e.g. {{sex: [F, M]}}); in a real federation every "
                          "site must encode them identically")
    opts.setdefault("test_fraction", test_fraction)
    opts.setdefault("seed", seed)
    return load(roots=[str(path)], **opts)


DATASET = Dataset(
    name="multimodal-sites", task="binary", default_model="multimodal",
    description=("Multimodal site folders: manifest.csv images joined per patient_id to "
                 "clinical columns (options: roots or path, clinical, spatial_size, demo)"),
    natural_sites=True, load_federation=load, load_site=load_site)
