"""Hospital site folders (``manifest.csv`` + DICOM/NIfTI) as sites: one site per folder.

Options: ``roots`` (site folders, one site each: use ``partition.scheme: natural``), ``task``
(classification | segmentation), ``spatial_size`` (every image is resized to it: 2 numbers for
2D, 3 for 3D), ``window`` (CT preset such as soft_tissue, lung, brain, bone, or [level, width]
in HU; default: per-image 0.5-99.5 percentile scaling), ``spacing`` (resample to these mm
first), ``series_uid`` / ``volume_index`` (the explicit choice for folders holding several
series or volumes; manifest columns ``series_uid``/``volume`` override per row), ``as_slices``
(3D volumes become 2D samples along ``slice_axis``), ``labels`` (allowed labels, in class
order), ``label_column``, ``test_fraction`` and ``seed`` (patient-level split when the
manifest has no ``split``), ``cache_dir`` (preprocessed arrays; default
``$MEDFED_CACHE_DIR`` or ``~/.medfed/cache``), ``allowed_roots`` (folders outside a site
folder its manifest may point into; by default every path, symlinks resolved, stays inside).

Multi-sequence studies (manifest ``image_<sequence>`` columns, or ``;`` in ``image``) become
channels on the first sequence's grid (another grid is resampled onto it when ``spacing`` is
set). ``normalize``: ``percentile`` (0.5-99.5 % to [0, 1], the default for one channel) or
``zscore`` (MONAI NormalizeIntensity over non-zero voxels per channel, the default for several
channels); ``window`` overrides both for CT. ``crop_foreground``: crop to the box of voxels
above 0 (MONAI CropForegroundd; MRI background) before resizing. ``mask_labels``: raw mask
values -> named, possibly overlapping regions (``{wt: [1, 2, 3, 4], tc: [1, 3, 4], et: [4]}``),
one sigmoid output and one Dice per region (task ``regions:wt,tc,et``). ``mask_category``:
the category a polygon JSON mask is read for (a manifest ``mask_category`` column overrides).
A tilted or unevenly spaced DICOM series trains only resampled: set ``spacing``.

Every row is decoded once: the preprocessed arrays are cached on disk, keyed by the source
files (path, size, modification time) and the preprocessing options, so later runs and rounds
read ``.npy`` files (memory-mapped) and never decode DICOM again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from medfed.datasets.base import Dataset, TableDataset
from medfed.datasets.imaging.dicom import DicomProblem, apply_window, dicom_files, resolve_window
from medfed.datasets.imaging.manifest import Row, allowed_labels, manifest_rows, read_manifest
from medfed.datasets.imaging.nifti import resample
from medfed.datasets.imaging.study import (
    NORMALIZERS,
    crop_foreground,
    parse_mask_labels,
    region_masks,
    stack_channels,
)
from medfed.datasets.imaging.volume import load_image, load_mask
from medfed.errors import MedFedError
from medfed.io import atomic_write_bytes

CACHE_VERSION = 2  # 2: channels, regions, tilted/uneven series resampled


def cache_root(cache_dir: str | None) -> Path:
    root = cache_dir or os.environ.get("MEDFED_CACHE_DIR") or Path.home() / ".medfed" / "cache"
    return Path(root) / "imaging"


def source_files(row: Row) -> list[Path]:
    """Every file a row reads (a series folder contributes all its files)."""
    files = []
    for path in (*(row.images or [row.image]), row.mask):
        if path is None:
            continue
        files += dicom_files(path) if path.is_dir() else [path]
    return files


def cache_key(row: Row, params: dict[str, Any]) -> str:
    """Hash of the source files (path, size, mtime) and the preprocessing options."""
    stats = []
    for path in source_files(row):
        st = path.stat()
        stats.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
    payload = json.dumps({"files": stats, "params": params, "version": CACHE_VERSION,
                          "series_uid": row.series_uid, "volume": row.volume_index},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array))
    atomic_write_bytes(path, buffer.getvalue())


def _fit_dims(array: np.ndarray, n_dims: int, where: str) -> np.ndarray:
    """Drop a singleton slice axis so a one-slice volume can feed a 2D model."""
    if array.ndim == n_dims:
        return array
    if array.ndim == 3 and n_dims == 2 and 1 in array.shape:
        return np.squeeze(array, axis=array.shape.index(1))
    raise MedFedError(f"{where}: a {array.ndim}D image {array.shape} but spatial_size has "
                      f"{n_dims} numbers; give dataset.options.spatial_size {array.ndim} numbers "
                      f"{'or set as_slices: true' if array.ndim == 3 else ''}".rstrip())


def preprocess(image: np.ndarray, mask: np.ndarray | None, spatial_size: tuple[int, ...],
               window: tuple[float, float] | None, normalize: str = "percentile",
               crop: bool = False, channels: bool = False
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """(X, Y[, Z]) (or (C, X, Y[, Z]) with ``channels``) -> (C, *spatial_size) float32; mask
    (X, Y[, Z]) -> (1, *spatial_size) int64. Order: crop to the foreground (``crop``), window
    or normalise each channel, resize."""
    from monai.transforms import NormalizeIntensity, Resize, ScaleIntensityRangePercentiles

    image = (image if channels else image[None]).astype(np.float32, copy=False)
    mask = None if mask is None else mask[None]
    if crop:
        image, mask = crop_foreground(image, mask)
    if window is not None:
        image = apply_window(image, window)
    elif normalize == "zscore":
        image = NormalizeIntensity(nonzero=True, channel_wise=True)(image)
    else:
        image = ScaleIntensityRangePercentiles(0.5, 99.5, 0.0, 1.0, clip=True,
                                               channel_wise=True)(image)
    x = np.asarray(Resize(spatial_size, mode="area")(np.asarray(image, np.float32)),
                   dtype=np.float32)
    if mask is None:
        return x, None
    y = Resize(spatial_size, mode="nearest")(np.asarray(mask, np.float32))
    return x, np.rint(np.asarray(y)).astype(np.int64)


def _read_study(row: Row, params: dict[str, Any], where: str):
    """(channel volumes, mask or None) of one row; problems are one line without paths."""
    try:
        series_uid = row.series_uid or params["series_uid"]
        index = row.volume_index if row.volume_index is not None else params["volume_index"]
        volumes = [load_image(path, series_uid, index, params["spacing"])
                   for path in row.images or [row.image]]
        mask = (load_mask(row.mask, volumes[0], row.mask_category
                          or params.get("mask_category"))
                if params["task"] == "segmentation" else None)
    except DicomProblem as exc:
        # no path or header value here: training errors may travel to the coordinator
        raise MedFedError(f"{where}: {exc.kind.replace('_', ' ')} image or mask",
                          where="manifest.csv", fix="run `medfed data check` on the site "
                          "folder to see the file and the fix") from None
    for volume in volumes:
        if volume.dicom is not None and volume.dicom.irregular and volume.regridded is None:
            raise MedFedError(f"{where}: irregular slice geometry ({volume.dicom.irregular}); "
                              "set dataset.options.spacing (x, y, z mm) to resample it onto a "
                              "regular grid")
    return volumes, mask


def load_row(row: Row, params: dict[str, Any], where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """One manifest row -> (k, C, *spatial) images and (k, 1 or R, *spatial) masks (k = 1, or
    slices; C channels, R regions)."""
    volumes, mask = _read_study(row, params, where)
    names = row.channels if len(row.channels) == len(volumes) else [
        str(i) for i in range(len(volumes))]
    image = stack_channels(volumes, names, bool(params["spacing"]), where)
    first = volumes[0]
    if params["spacing"] and first.regridded is None:
        target = tuple(params["spacing"])
        image = np.stack([resample(c, first.spacing, target) for c in image])
        mask = None if mask is None else resample(mask, first.spacing, target, nearest=True)
    window = resolve_window(params["window"])
    size = tuple(params["spatial_size"])
    normalize = params.get("normalize") or ("zscore" if len(image) > 1 else "percentile")
    options = {"normalize": normalize, "crop": bool(params.get("crop_foreground")),
               "channels": True}
    regions = parse_mask_labels(params.get("mask_labels"))
    if params["as_slices"] and image.ndim == 4:
        axis = params["slice_axis"]
        pairs = [preprocess(np.take(image, k, axis + 1), None if mask is None else
                            np.take(mask, k, axis), size, window, **options)
                 for k in range(image.shape[axis + 1])]
        xs = np.stack([p[0] for p in pairs])
        ys = None if mask is None else [p[1] for p in pairs]
        return xs, None if ys is None else np.stack([_regions(y, regions) for y in ys])
    image = np.stack([_fit_dims(c, len(size), where) for c in image])
    mask = None if mask is None else _fit_dims(mask, len(size), where)
    x, y = preprocess(image, mask, size, window, **options)
    return x[None], None if y is None else _regions(y, regions)[None]


def _regions(mask: np.ndarray, regions: dict[str, list[int]] | None) -> np.ndarray:
    return mask if regions is None else region_masks(mask, regions)


def cached_row(row: Row, params: dict[str, Any], cache: Path, where: str
               ) -> tuple[np.ndarray, np.ndarray | None, str]:
    """``load_row`` through the on-disk cache (memory-mapped on a hit); also its cache key."""
    if row.image is None or not row.image.exists():
        raise MedFedError(f"{where}: image file not found; run `medfed data check` on the "
                          "site folder to see the path and the fix")
    key = cache_key(row, params)
    x_path, y_path = cache / f"{key}-x.npy", cache / f"{key}-y.npy"
    want_mask = params["task"] == "segmentation"
    if x_path.is_file() and (not want_mask or y_path.is_file()):
        return (np.load(x_path, mmap_mode="r"),
                np.load(y_path, mmap_mode="r") if want_mask else None, key)
    x, y = load_row(row, params, where)
    _save_npy(x_path, x)
    if y is not None:
        _save_npy(y_path, y)
    return x, y, key


def _class_order(values: list[str], given: list[str] | None) -> list[str]:
    if given:
        return [str(v) for v in given]
    unique = sorted(set(values))
    try:
        return sorted(unique, key=float)
    except ValueError:
        return unique


def patient_split(patients: list[str], strata: list[int], test_fraction: float,
                  seed: int) -> dict[str, str]:
    """Patients -> train/test, stratified when every class has 2+ patients."""
    from sklearn.model_selection import train_test_split

    if len(patients) < 2:
        return {p: "train" for p in patients}
    counts = np.bincount(strata)
    stratify = strata if counts[counts > 0].min() >= 2 else None
    n_test = max(1, round(len(patients) * test_fraction))
    if stratify is not None and n_test < len(set(strata)):
        stratify = None
    train, test = train_test_split(patients, test_size=n_test, random_state=seed,
                                   stratify=stratify)
    return {**{p: "train" for p in train}, **{p: "test" for p in test}}


def site_split(rows: list[Row], counts: list[int], strata: list[int], test_fraction: float,
               seed: int) -> np.ndarray:
    """Each sample's split: the manifest's, else by patient; slices of a lone patient by slice."""
    auto = [r for r in rows if r.split not in ("train", "test")]
    first_label: dict[str, int] = {}
    for row, s in zip(rows, strata, strict=True):
        first_label.setdefault(row.patient_id, s)
    patients = sorted({r.patient_id for r in auto})
    chosen = patient_split(patients, [first_label[p] for p in patients], test_fraction, seed)
    split = []
    for row, k in zip(rows, counts, strict=True):
        value = row.split if row.split in ("train", "test") else chosen[row.patient_id]
        split += [value] * k
    split = np.asarray(split, dtype=object)
    if len(patients) == 1 and len(rows) == 1 and counts[0] > 1:
        # a one-patient site (e.g. one volume as slices): the only split left is by slice
        rng = np.random.default_rng(seed)
        test = rng.permutation(counts[0])[: max(1, round(counts[0] * test_fraction))]
        split[:] = "train"
        split[test] = "test"
    return split


def load(roots: list[str] | str, task: str = "classification",
         spatial_size: list[int] | tuple[int, ...] = (64, 64),
         window: str | list[float] | None = None, spacing: list[float] | None = None,
         series_uid: str | None = None, volume_index: int | None = None,
         as_slices: bool = False, slice_axis: int = 2, labels: list[str] | None = None,
         label_column: str = "label", test_fraction: float = 0.3, seed: int = 42,
         cache_dir: str | None = None, normalize: str | None = None,
         crop_foreground: bool = False, mask_labels: dict[str, list[int]] | None = None,
         mask_category: str | None = None, allowed_roots: list[str] | None = None
         ) -> TableDataset:
    """Site folders -> ``x`` (N, C, *spatial_size) float32, ``y`` (N,) labels or
    (N, 1, *spatial_size) masks ((N, R, *spatial_size) with R ``mask_labels`` regions),
    ``groups`` = folder name, ``split`` per sample."""
    if task not in ("classification", "segmentation"):
        raise MedFedError(f"dataset.options.task: {task!r}; choose classification or "
                          "segmentation")
    if normalize is not None and normalize not in NORMALIZERS:
        raise MedFedError(f"dataset.options.normalize: {normalize!r}; choose "
                          f"{' or '.join(NORMALIZERS)}")
    regions = parse_mask_labels(mask_labels)
    if regions and task != "segmentation":
        raise MedFedError("dataset.options.mask_labels: regions need task: segmentation")
    if len(spatial_size) not in (2, 3):
        raise MedFedError("dataset.options.spatial_size: give 2 numbers (2D) or 3 (3D)")
    resolve_window(window)
    roots = [roots] if isinstance(roots, str) else list(roots or [])
    if not roots:
        raise MedFedError("dataset.options.roots: list the site folders, one per hospital")
    params = {"task": task, "spatial_size": [int(s) for s in spatial_size], "window": window,
              "spacing": spacing, "series_uid": series_uid, "volume_index": volume_index,
              "as_slices": as_slices, "slice_axis": slice_axis, "normalize": normalize,
              "crop_foreground": crop_foreground, "mask_labels": regions,
              "mask_category": mask_category}
    cache = cache_root(cache_dir)
    names = _site_names([Path(r) for r in roots])
    xs, ys, label_values, groups, splits, patients = [], [], [], [], [], []
    for root, name in zip(roots, names, strict=True):
        x, y, raw_labels, split, ids = _load_site(Path(root), name, params, cache, labels,
                                                  label_column, test_fraction, seed,
                                                  allowed_roots or [])
        xs += x
        ys += y
        label_values += raw_labels
        groups += [name] * len(split)
        splits.append(split)
        patients += ids
    x = _stack(xs, cache)
    if regions:
        y = _stack(ys, cache, np.int64)
        class_names, kind = list(regions), "regions:" + ",".join(regions)
    elif task == "segmentation":
        y = _stack(ys, cache, np.int64)
        n_classes = max(int(y.max()) + 1, 2)
        class_names = ["background"] + [f"label {i}" for i in range(1, n_classes)]
        kind = "segmentation"
    else:
        class_names = _class_order(label_values, labels)
        index = {c: i for i, c in enumerate(class_names)}
        y = np.asarray([index[v] for v in label_values], dtype=np.int64)
        kind = "binary" if len(class_names) == 2 else "multiclass"
    return TableDataset(
        name="site-folders", task=kind, x=x, y=y, feature_names=["image"],
        groups=np.asarray(groups, dtype=object), split=np.concatenate(splits),
        class_names=class_names, standardize=False,
        # every sample (image, volume or slice) belongs to its manifest row's patient; a
        # row without a patient_id leaves the unit unknown
        units=np.asarray(patients, dtype=object), unit=None if "" in patients else "patient",
        source=f"{len(roots)} site folders, {len(y)} samples")


def _site_names(roots: list[Path]) -> list[str]:
    names = [r.resolve().name or "site" for r in roots]
    return [n if names.count(n) == 1 else f"{n}-{i + 1}" for i, n in enumerate(names)]


def _load_site(root: Path, name: str, params: dict, cache: Path, labels: list[str] | None,
               label_column: str, test_fraction: float, seed: int,
               allowed_roots: list[str] = ()):  # folders outside ``root`` a manifest may use
    frame = read_manifest(root, label_column)
    rows = manifest_rows(root, frame, label_column, allowed_roots)
    if not rows:
        raise MedFedError(f"{root}/manifest.csv: no rows; list the site's samples")
    counts = sorted({len(r.channels) for r in rows})
    if len(counts) > 1:
        raise MedFedError(f"{root}/manifest.csv: rows list {counts} images each; every study "
                          "needs the same sequences (channels), in the same order")
    allowed = allowed_labels(root, labels)
    segmentation = params["task"] == "segmentation"
    xs, ys, raw_labels, counts, strata, patients = [], [], [], [], [], []
    for row in rows:
        where = f"site {name} manifest row {row.number}"
        if segmentation and row.mask is None:
            raise MedFedError(f"{where}: no mask; segmentation needs a mask path in every row")
        if not segmentation and (row.label is None or (allowed and row.label not in allowed)):
            raise MedFedError(f"{where}: label {row.label!r} missing or not in {allowed}; run "
                              "`medfed data check` on the folder")
        x, y, key = cached_row(row, params, cache, where)
        xs.append((key, x))
        counts.append(len(x))
        patients += [f"{name}/{row.patient_id}" if row.patient_id else ""] * len(x)
        if segmentation:
            ys.append((key, y))
            strata.append(0)
        else:
            raw_labels += [row.label] * len(x)
            strata.append(row.label)
    if not segmentation:
        codes = {v: i for i, v in enumerate(sorted(set(strata)))}
        strata = [codes[s] for s in strata]
    split = site_split(rows, counts, strata, test_fraction, seed)
    return xs, ys, raw_labels, split, patients


def _stack(keyed: list[tuple[str, np.ndarray]], cache: Path,
           dtype: type = np.float32) -> np.ndarray:
    """Concatenate per-row arrays into one memory-mapped cache file (read-only)."""
    parts = [p for _, p in keyed]
    shapes = {p.shape[1:] for p in parts}
    if len(shapes) > 1:
        raise MedFedError(f"site folders: images preprocess to different shapes {shapes}; "
                          "use one spatial_size and the same channels for every site")
    total = sum(len(p) for p in parts)
    digest = hashlib.sha256()
    for key, _ in keyed:
        digest.update(key.encode())
    digest.update(np.dtype(dtype).str.encode())
    path = cache / f"stack-{digest.hexdigest()[:32]}.npy"
    if not path.is_file():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype,
                                        shape=(total, *parts[0].shape[1:]))
        at = 0
        for p in parts:
            out[at:at + len(p)] = p
            at += len(p)
        out.flush()
        del out
        os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


DATASET = Dataset(
    name="site-folders", task="binary", default_model="small_cnn",
    description=("Hospital site folders: manifest.csv + DICOM/NIfTI images, labels or masks "
                 "(options: roots, task, spatial_size, window, ...)"),
    natural_sites=True, load_federation=load)
