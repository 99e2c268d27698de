"""Three real MR volumes with lesion masks (pyradiomics test cases), one hospital each.

Reads ``$MEDFED_DATA_DIR/nifti-pyradiomics/{brain1,brain2,breast1}_{image,label}.nii.gz``
through the ``site-folders`` reader: a ``manifest.csv`` per site is written to the cache
(the data folder stays read-only) and each volume is cut into 2D slices (``as_slices``)
resized to ``spatial_size``. One patient per site leaves no patient-level split, so each
site's slices are split train/test stratified by lesion presence (lesion slices in both).
x: (N, 1, H, W) float32 in [0, 1]; y: (N, 1, H, W) int64 masks; groups: the volume's name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medfed.datasets.base import Dataset, TableDataset
from medfed.datasets.files import data_dir
from medfed.datasets.splits import split_rows
from medfed.errors import MedFedError
from medfed.io import atomic_write_text

VOLUMES = ("brain1", "brain2", "breast1")


def site_folders(cache: Path) -> list[Path]:
    """One folder per volume holding only a ``manifest.csv`` that points at the real files."""
    source = data_dir("nifti-pyradiomics")
    roots = []
    for name in VOLUMES:
        image, mask = source / f"{name}_image.nii.gz", source / f"{name}_label.nii.gz"
        if not image.is_file() or not mask.is_file():
            raise MedFedError(f"{image.parent}: {image.name} or {mask.name} not found; set "
                              "MEDFED_DATA_DIR to the folder holding nifti-pyradiomics/")
        root = cache / name
        atomic_write_text(root / "manifest.csv", "patient_id,image,mask\n"
                          f"{name},{image.resolve()},{mask.resolve()}\n")
        roots.append(root)
    return roots


def lesion_split(y: np.ndarray, groups: np.ndarray, test_fraction: float,
                 seed: int) -> np.ndarray:
    """Per site, slices to train/test stratified by whether they hold lesion voxels (the
    segmentation task's rule: only when both kinds have 2+ slices)."""
    split = np.full(len(y), "train", dtype=object)
    for site in np.unique(groups):
        _, test = split_rows(np.flatnonzero(groups == site), y, test_fraction, seed,
                             "segmentation")
        split[test] = "test"
    return split


def load(spatial_size: list[int] | tuple[int, int] = (128, 128), slice_axis: int = 2,
         test_fraction: float = 0.3, seed: int = 42, cache_dir: str | None = None
         ) -> TableDataset:
    """The three volumes as slices (see the module docstring)."""
    from medfed.datasets.imaging import site_folders as folders

    if len(spatial_size) != 2:
        raise MedFedError("dataset.options.spatial_size: give 2 numbers (slices are 2D)")
    root = Path(cache_dir or os.environ.get("MEDFED_CACHE_DIR") or Path.home() / ".medfed"
                / "cache") / "nifti-pyradiomics-sites"
    data = folders.load([str(r) for r in site_folders(root)], task="segmentation",
                        spatial_size=list(spatial_size), as_slices=True, slice_axis=slice_axis,
                        test_fraction=test_fraction, seed=seed, cache_dir=cache_dir,
                        allowed_roots=[str(data_dir("nifti-pyradiomics").resolve())])
    data.name = "nifti-pyradiomics"
    data.split = lesion_split(np.asarray(data.y), data.groups, test_fraction, seed)
    data.keep_split = True
    return data


DATASET = Dataset(
    name="nifti-pyradiomics", task="segmentation", default_model="unet",
    description="Three real MR volumes with lesion masks (pyradiomics), one site each, as slices",
    natural_sites=True, load_federation=load)
