"""HAM10000 dermoscopy (JPEG) + metadata (age, sex, localization), read where it lies.

``path``: the folder holding ``HAM10000_metadata*.csv`` and the JPEGs (in class subfolders or
flat); default ``$MEDFED_DATA_DIR/ham10000-sample``. Nothing is copied: MedFed writes
``sites`` multimodal site folders (manifest.csv with absolute image paths and the clinical
columns) into its cache and loads them with ``multimodal-sites``. Patients (``lesion_id``)
are dealt to sites round-robin, in sorted order. ``target``: ``malignant`` (mel, bcc, akiec vs
the rest; binary) or ``dx`` (the 7 diagnoses; multiclass).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd

from medfed.datasets.base import Dataset, TableDataset
from medfed.datasets.imaging.manifest import MANIFEST
from medfed.errors import MedFedError
from medfed.io import atomic_write_text

MALIGNANT = {"mel", "bcc", "akiec"}
CLINICAL = {"numeric": ["age"], "categorical": ["sex", "localization"]}


def default_path() -> Path:
    root = os.environ.get("MEDFED_DATA_DIR")
    if not root:
        raise MedFedError("dataset.options.path: not given and MEDFED_DATA_DIR is not set; "
                          "point path at the folder with HAM10000_metadata*.csv and the JPEGs")
    return Path(root) / "ham10000-sample"


def metadata(folder: Path) -> tuple[pd.DataFrame, dict[str, Path]]:
    """The metadata table and image_id -> JPEG path (searched in the folder's subfolders)."""
    tables = sorted(folder.glob("HAM10000_metadata*.csv")) if folder.is_dir() else []
    if not tables:
        raise MedFedError(f"{folder}: no HAM10000_metadata*.csv; point dataset.options.path at "
                          "the HAM10000 folder")
    frame = pd.read_csv(tables[0], dtype=str, keep_default_na=False, na_values=["", "unknown"])
    need = ["lesion_id", "image_id", "dx", "age", "sex", "localization"]
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise MedFedError(f"{tables[0]}: columns {missing} missing; the HAM10000 metadata has "
                          f"{', '.join(need)}")
    images = {p.stem: p.resolve() for p in folder.rglob("*.jpg")}
    return frame, images


def write_sites(folder: Path, sites: int, target: str, cache: Path) -> list[Path]:
    """Site folders (manifests only, images referenced in place) under ``cache``."""
    frame, images = metadata(folder)
    frame = frame[frame["image_id"].isin(images)].copy()
    if frame.empty:
        raise MedFedError(f"{folder}: no metadata row has its JPEG; keep <image_id>.jpg files "
                          "next to the metadata (subfolders allowed)")
    frame["label"] = frame["dx"].map(lambda d: str(int(d in MALIGNANT))) if target == \
        "malignant" else frame["dx"]
    lesions = sorted(frame["lesion_id"].unique())
    site_of = {lesion: i % sites for i, lesion in enumerate(lesions)}
    out = []
    for s in range(sites):
        rows = frame[frame["lesion_id"].map(site_of) == s]
        manifest = pd.DataFrame({"patient_id": rows["image_id"],
                                 "image": [str(images[i]) for i in rows["image_id"]],
                                 "label": rows["label"], "age": rows["age"], "sex": rows["sex"],
                                 "localization": rows["localization"]})
        site_dir = cache / f"site-{s + 1}"
        atomic_write_text(site_dir / MANIFEST, manifest.to_csv(index=False))
        out.append(site_dir)
    return out


def load(path: str | None = None, sites: int = 2, target: str = "malignant",
         spatial_size: list[int] | tuple[int, ...] = (32, 32), test_fraction: float = 0.3,
         seed: int = 42, cache_dir: str | None = None) -> TableDataset:
    """HAM10000 as ``sites`` multimodal site folders -> packed rows (N, 3*H*W + F + 2)."""
    from medfed.datasets.imaging.site_folders import cache_root
    from medfed.datasets.multimodal import sites as multimodal_sites

    if target not in ("malignant", "dx"):
        raise MedFedError(f"dataset.options.target: {target!r}; choose malignant or dx")
    folder = Path(path) if path else default_path()
    key = hashlib.sha256(f"{folder.resolve()}|{sites}|{target}".encode()).hexdigest()[:16]
    cache = cache_root(cache_dir) / f"ham10000-{key}"
    roots = write_sites(folder, int(sites), target, cache)
    data = multimodal_sites.load(roots=[str(r) for r in roots], clinical=CLINICAL,
                                 spatial_size=spatial_size, test_fraction=test_fraction,
                                 seed=seed, cache_dir=cache_dir,
                                 allowed_roots=[str(folder.resolve())])  # JPEGs stay in place
    data.name, data.source = "ham10000", f"{folder} ({len(data.y)} images, {sites} sites)"
    data.unit = None  # rows are lesions (lesion_id): HAM10000 does not say whose
    return data


DATASET = Dataset(
    name="ham10000", task="binary", default_model="multimodal",
    description=("HAM10000 dermoscopy JPEGs + age, sex, localization (options: path, sites, "
                 "target: malignant|dx, spatial_size)"),
    natural_sites=True, load_federation=load)
