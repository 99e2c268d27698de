"""What `medfed stats` summarises at one site: its variables, labels, follow-up and images.

A ``SiteView`` is read where the data lives and never leaves the site: the statistics query
(``medfed.privacy.site_stats``) turns it into counts and sums with small cells suppressed.
Where the dataset's raw export can be read per site (heart-disease's UCI tables, PhysioNet
``.psv`` stays, imaging site folders), the view holds the raw variables with their missing
values; otherwise it holds the model's features after the dataset's preprocessing (``source``
says which).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from medfed.config import ExperimentConfig, config_from_json
from medfed.datasets.base import Site, TableDataset
from medfed.datasets.sites import simulated_sites_and_schema
from medfed.errors import MedFedError

RAW_SOURCE = "raw export (before the dataset's preprocessing)"
FEATURE_SOURCE = "model features (after the dataset's preprocessing)"
# columns that identify a patient, a file or a moment: never summarised, never sent
IDENTIFIER = re.compile(r"(^|_)(id|pid|mrn|name|uid|ssn|date|time_?stamp|image|mask|path|"
                        r"file|split|series_uid|volume)($|_)|patient", re.IGNORECASE)


@dataclass
class ImageFacts:
    """One image: header facts (released only as counts) and its voxel values.

    ``intensities``: (V,) values inside the mask, else inside the body (above the image's 5th
    percentile), in the image's own units (HU for CT). ``lesion_ml``: mask volume in mL (None
    without a mask or without a physical spacing).
    """

    modality: str
    manufacturer: str
    model: str
    shape: str
    spacing: str
    orientation: str
    region: str
    intensities: np.ndarray
    lesion_ml: float | None = None


@dataclass
class SiteView:
    """One site's data for statistics; ``table`` has one row per ``unit`` (e.g. patients).

    ``units``: (rows,) the individual of each row when one individual has several rows (an ICU
    stay's hours): small cells then count individuals, not rows. ``labels``: (rows,) class
    name per row; ``survival``: ((rows,) time, (rows,) event 0/1).
    """

    name: str
    unit: str
    table: pd.DataFrame
    source: str
    units: np.ndarray | None = None
    labels: pd.Series | None = None
    survival: tuple[np.ndarray, np.ndarray] | None = None
    images: list[ImageFacts] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)


def split_identifiers(table: pd.DataFrame, max_levels: int) -> tuple[pd.DataFrame, dict]:
    """Drop identifier, date and free-text columns; ``{column: why}`` for those dropped."""
    excluded: dict[str, str] = {}
    for column in table.columns:
        values = table[column]
        if IDENTIFIER.search(str(column)):
            excluded[column] = "identifier, path or date column"
        elif not pd.api.types.is_numeric_dtype(values):
            text = values.dropna().astype(str)
            if _looks_like_dates(text):
                excluded[column] = "dates"
            elif text.nunique() > max_levels:
                excluded[column] = f"free text or codes (> {max_levels} distinct values)"
    return table.drop(columns=list(excluded)), excluded


def _looks_like_dates(text: pd.Series) -> bool:
    sample = text.head(50)
    return len(sample) > 0 and bool(sample.str.match(r"^\d{4}-\d{2}-\d{2}|^\d{1,2}/\d{1,2}/\d{2,4}")
                                    .mean() > 0.8)


def feature_view(site: Site, data: TableDataset) -> SiteView:
    """A site's model features and labels (every dataset; images become ``ImageFacts``)."""
    x = np.concatenate([site.x_train, site.x_test])
    y = np.concatenate([site.y_train, site.y_test])
    view = SiteView(site.name, "samples", pd.DataFrame(index=range(len(x))), FEATURE_SOURCE)
    if x.ndim == 2:
        x, names = _named_columns(np.asarray(x), data.feature_names)
        view.table = pd.DataFrame(x, columns=names)
        view.unit = "patients"
    elif x.ndim >= 4:
        view.unit = "images"
        view.images = [array_facts(np.asarray(image), mask)
                       for image, mask in zip(x, _masks(y, len(x)), strict=True)]
    _set_labels(view, y, data)
    return view


def _named_columns(x: np.ndarray, names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """(rows, features) with one name per column; a packed ``image`` block that leads a
    multimodal row (its pixels, many columns under one name) is left out of the table."""
    if not names or len(names) == x.shape[1]:
        return x, names or [f"f{i}" for i in range(x.shape[1])]
    if names[0] == "image" and len(names) - 1 < x.shape[1]:
        return x[:, x.shape[1] - (len(names) - 1):], names[1:]
    return x, [f"f{i}" for i in range(x.shape[1])]


def _masks(y: np.ndarray, n: int) -> list[np.ndarray | None]:
    return list(y) if y.ndim >= 3 else [None] * n


def _set_labels(view: SiteView, y: np.ndarray, data: TableDataset) -> None:
    if data.task == "survival":
        view.survival = (np.asarray(y[:, 0], float), np.asarray(y[:, 1], float))
    elif data.task == "timeseries":
        names = data.class_names or ["0", "1"]
        view.labels = pd.Series([names[int(v)] for v in y[:, 0]])
    elif y.ndim == 1:
        names = data.class_names or [str(i) for i in range(int(y.max()) + 1)]
        view.labels = pd.Series([names[int(v)] for v in y])


def array_facts(image: np.ndarray, mask: np.ndarray | None) -> ImageFacts:
    """Facts of a preprocessed array image (C, *spatial): no header, no physical spacing."""
    values = image.reshape(-1)
    region = "image"
    if mask is not None and np.any(mask > 0):
        values, region = image[0][np.asarray(mask[0]) > 0], "mask"
    return ImageFacts("unknown (preprocessed array)", "unknown", "unknown",
                      "x".join(map(str, image.shape[1:])), "unknown", "unknown", region,
                      np.asarray(values, np.float32),
                      None if mask is None else float(np.count_nonzero(mask)))


# --- raw exports ---------------------------------------------------------------------------


def heart_raw(frame: pd.DataFrame, name: str) -> SiteView:
    """The 14 UCI columns with their missing values; label ``num > 0``."""
    table = frame.drop(columns=["num"]).reset_index(drop=True)
    labels = pd.Series(np.where(frame["num"].to_numpy() > 0, "disease", "no disease"))
    return SiteView(name, "patients", table, RAW_SOURCE, labels=labels)


def sepsis_raw(raw: pd.DataFrame, stays: np.ndarray, name: str) -> SiteView:
    """Hourly rows of the 40 PhysioNet variables; stays are the individuals."""
    from medfed.datasets.timeseries.sepsis_features import LABEL

    labels = pd.Series(np.where(raw[LABEL].to_numpy() > 0, "sepsis", "no sepsis"))
    return SiteView(name, "stay-hours", raw.drop(columns=[LABEL]).reset_index(drop=True),
                    RAW_SOURCE, units=np.asarray(stays), labels=labels)


def folder_raw(root: Path, name: str, max_levels: int, label_column: str = "label") -> SiteView:
    """An imaging site folder: manifest clinical columns, labels and every image's facts."""
    from medfed.datasets.imaging.manifest import manifest_rows, read_manifest

    frame = read_manifest(root, label_column)
    rows = manifest_rows(root, frame, label_column)
    table = frame.drop(columns=[label_column], errors="ignore").apply(_numeric_if_possible)
    table, excluded = split_identifiers(table, max_levels)
    labels = frame[label_column].astype(str) if label_column in frame.columns else None
    images = [image_facts(row) for row in rows if row.image is not None]
    return SiteView(name, "patients", table.reset_index(drop=True), RAW_SOURCE, labels=labels,
                    images=[i for i in images if i is not None], excluded=excluded)


def _numeric_if_possible(values: pd.Series) -> pd.Series:
    converted = pd.to_numeric(values, errors="coerce")
    return converted if converted.notna().sum() == values.notna().sum() else values


def image_facts(row) -> ImageFacts | None:
    """Header facts, voxel values (inside mask or body) and lesion volume of one row."""
    from medfed.datasets.imaging.dicom import DicomProblem
    from medfed.datasets.imaging.volume import load_image, load_mask

    try:
        volume = load_image(row.image, row.series_uid, row.volume_index)
        mask = load_mask(row.mask, volume) if row.mask is not None else None
    except (DicomProblem, OSError):
        return None  # `medfed data check` names unreadable rows; statistics skip them
    array = volume.array
    if mask is not None and np.any(mask > 0):
        values, region = array[mask > 0], "mask"
    else:
        values, region = array[array > np.percentile(array, 5)], "body"
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    lesion = None if mask is None else float(np.count_nonzero(mask > 0)) * voxel_ml
    manufacturer, model = _device(row.image) if volume.fmt == "dicom" else ("unknown", "unknown")
    return ImageFacts(volume.modality, manufacturer, model, "x".join(map(str, volume.shape)),
                      "x".join(f"{s:.2f}" for s in volume.spacing), volume.orientation, region,
                      np.asarray(values, np.float32), lesion)


def _device(path: Path) -> tuple[str, str]:
    """(Manufacturer, ManufacturerModelName) of a DICOM file or series folder's first file."""
    import pydicom

    from medfed.datasets.imaging.dicom import dicom_files

    first = dicom_files(path)[0] if Path(path).is_dir() else Path(path)
    try:
        ds = pydicom.dcmread(first, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - a header we cannot read is "unknown", not an error
        return "unknown", "unknown"
    return (str(getattr(ds, "Manufacturer", "") or "unknown"),
            str(getattr(ds, "ManufacturerModelName", "") or "unknown"))


# --- the views of an experiment ------------------------------------------------------------


@lru_cache(maxsize=4)
def simulated_views(experiment_json: str) -> tuple[SiteView, ...]:
    """Every virtual site's view (the raw export where the partition is the data's own)."""
    cfg = config_from_json(experiment_json)
    if cfg.partition.scheme == "natural":
        raw = natural_raw_views(cfg)
        if raw is not None:
            return tuple(raw)
    sites, _, data = simulated_sites_and_schema(experiment_json)  # the training run's sites
    return tuple(_cleaned(feature_view(site, data), cfg) for site in sites)


def natural_raw_views(cfg: ExperimentConfig) -> list[SiteView] | None:
    """Raw per-hospital views of datasets whose export MedFed can read per site, else None."""
    name, options = cfg.dataset.name, dict(cfg.dataset.options)
    if name == "heart-disease":
        from medfed.datasets.clinical import heart_disease as hd
        from medfed.datasets.files import ensure_file

        views = []
        for centre in options.get("centres") or list(hd.CENTRES):
            filename, sha = hd.CENTRES[centre]
            path = ensure_file("heart-disease", filename, hd.URL + filename, sha)
            views.append(_cleaned(heart_raw(hd.read_centre(path), centre), cfg))
        return views
    if name == "sepsis":
        return [_cleaned(v, cfg) for v in _sepsis_views(options)]
    if name == "site-folders":
        roots = options.get("roots") or []
        roots = [roots] if isinstance(roots, str) else list(roots)
        from medfed.datasets.imaging.site_folders import _site_names

        names = _site_names([Path(r) for r in roots])
        return [_cleaned(folder_raw(Path(r), n, cfg.stats.max_levels,
                                    options.get("label_column", "label")), cfg)
                for r, n in zip(roots, names, strict=True)]
    return None


def _sepsis_views(options: dict) -> list[SiteView]:
    from medfed.datasets.files import data_dir
    from medfed.datasets.timeseries.sepsis import read_stays

    root = (Path(options["path"]) if options.get("path")
            else data_dir(options.get("folder", "sepsis")))
    if not root.is_dir() or not any(root.rglob("*.psv")):
        raise MedFedError(f"{root}: no .psv files; set dataset.options.path to a folder of "
                          "PhysioNet stays (one sub-folder per hospital)")
    raw, stays, sites = read_stays(root, options.get("max_stays"))
    return [sepsis_raw(raw[sites == s], stays[sites == s], str(s)) for s in np.unique(sites)]


def hospital_view(experiment_json: str, data_path: str) -> SiteView:
    """A real hospital's view: its imaging folder or raw heart-disease export when the format
    allows, else the features its site folder loads to."""
    cfg = config_from_json(experiment_json)
    folder = Path(data_path)
    name = folder.name or "site"
    if (folder / "manifest.csv").is_file():
        return _cleaned(folder_raw(folder, name, cfg.stats.max_levels,
                                   cfg.dataset.options.get("label_column", "label")), cfg)
    if cfg.dataset.name == "heart-disease":
        from medfed.datasets.clinical.heart_disease import read_site_table
        from medfed.datasets.site_folder import table_file

        return _cleaned(heart_raw(read_site_table(table_file(folder)), name), cfg)
    from medfed.datasets.site_folder import load_site_folder

    site, data = load_site_folder(folder, cfg.dataset.name, cfg.dataset.options,
                                  test_fraction=cfg.partition.test_fraction,
                                  seed=cfg.partition_seed)
    site.name = name
    return _cleaned(feature_view(site, data), cfg)


def _cleaned(view: SiteView, cfg: ExperimentConfig) -> SiteView:
    """Identifier columns out; only the asked variables (``stats.variables``) kept."""
    table, excluded = split_identifiers(view.table, cfg.stats.max_levels)
    view.excluded.update(excluded)
    if cfg.stats.variables is not None:
        table = table[[c for c in table.columns if c in set(cfg.stats.variables)]]
    view.table = table
    return view
