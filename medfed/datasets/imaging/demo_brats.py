"""`medfed demo-data brats`: BraTS-like site folders of multi-sequence MRI brain phantoms.

Each patient folder holds four skull-stripped sequences (``flair``, ``t1``, ``t1c``, ``t2``,
NIfTI, background exactly 0 as in BraTS) and a tumour mask with BraTS labels: 1 necrotic /
non-enhancing core, 2 oedema, 4 enhancing tumour. The regions radiologists score are nested:
whole tumour (1, 2, 4) ⊃ tumour core (1, 4) ⊃ enhancing (4); every fifth patient's tumour does
not enhance (no label 4). Each sequence shows each tissue with its own contrast (oedema bright
on FLAIR/T2, the enhancing rim bright on T1c, necrosis dark on T1/T1c), so the regions need
several channels. Sites differ in intensity scale, bias field and noise (MR has no absolute
unit: per-channel normalisation matters); the last site's T2 is stored at half the in-plane
resolution (resampled onto the FLAIR grid when ``spacing`` is set), as unregistered raw
exports are. The brain fills about two thirds of the field of view (cropping to it pays).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from medfed.datasets.imaging.demo import new_site_dir, patient_id
from medfed.datasets.imaging.manifest import MANIFEST
from medfed.errors import MedFedError
from medfed.io import atomic_write_bytes, atomic_write_text

SEQUENCES = ("flair", "t1", "t1c", "t2")
VOXEL_MM = (1.0, 1.0, 2.0)
NECROSIS, EDEMA, ENHANCING = 1, 2, 4
# mean intensity (arbitrary MR units) of brain, oedema, enhancing rim, necrosis per sequence
CONTRAST = {"flair": (300, 620, 480, 420), "t1": (500, 390, 430, 240),
            "t1c": (520, 420, 950, 250), "t2": (400, 760, 600, 880)}
SITE_SCALE = (1.0, 0.6, 1.8, 1.2)  # scanners' arbitrary units differ by site
BRATS_REGIONS = {"wt": [1, 2, 3, 4], "tc": [1, 3, 4], "et": [4]}


def _ball(shape: tuple[int, ...], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii, strict=True)) <= 1.0


def brain_phantom(shape: tuple[int, int, int], rng: np.random.Generator,
                  enhancing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(brain mask bool, tumour labels uint8) of ``shape`` (X, Y, Z) with nested regions; a
    non-``enhancing`` tumour's core is label 1 only (no ET)."""
    size = np.asarray(shape, float)
    center = size / 2 + rng.normal(0, 0.02, 3) * size
    brain = _ball(shape, center, size * np.array([0.33, 0.38, 0.36]))
    spot = center + size * rng.uniform(-0.12, 0.12, 3)
    scale = np.array([1.0, 1.0, 0.5])  # voxels are 2 mm along Z: half the radius in voxels
    edema_r = rng.uniform(7.0, 10.0) * scale
    core_r = edema_r * rng.uniform(0.5, 0.65)
    necrosis_r = core_r * rng.uniform(0.4, 0.6)
    labels = np.zeros(shape, np.uint8)
    labels[_ball(shape, spot, edema_r)] = EDEMA
    core = _ball(shape, spot, core_r)
    if not enhancing:
        labels[core] = NECROSIS
    else:
        labels[core] = ENHANCING
        labels[_ball(shape, spot, necrosis_r)] = NECROSIS
    labels[~brain] = 0
    return brain, labels


def sequences(brain: np.ndarray, labels: np.ndarray, site: int, rng: np.random.Generator
              ) -> dict[str, np.ndarray]:
    """One float32 volume per sequence: tissue contrast x site scale x bias field + noise."""
    shape = brain.shape
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    tilt = rng.normal(0, 0.12, 3)
    bias = 1.0 + sum(t * g for t, g in zip(tilt, grids, strict=True))
    scale = SITE_SCALE[(site - 1) % len(SITE_SCALE)]
    out = {}
    for name in SEQUENCES:
        brain_v, edema_v, enh_v, nec_v = CONTRAST[name]
        volume = np.where(brain, brain_v, 0.0)
        volume[labels == EDEMA] = edema_v
        volume[labels == ENHANCING] = enh_v
        volume[labels == NECROSIS] = nec_v
        noise = rng.normal(0, 25.0 + 10.0 * site, shape)
        volume = np.where(brain, np.maximum(volume * bias + noise, 1.0), 0.0) * scale
        out[name] = volume.astype(np.float32)
    return out


def _affine(voxel: tuple[float, ...], shape: tuple[int, ...], shift: float = 0.0) -> np.ndarray:
    affine = np.diag([*voxel, 1.0])
    affine[:3, 3] = [-shape[0] * VOXEL_MM[0] / 2 + shift, -shape[1] * VOXEL_MM[1] / 2 + shift,
                     -shape[2] * VOXEL_MM[2] / 2]
    return affine


def _nifti(array: np.ndarray, affine: np.ndarray) -> bytes:
    import gzip

    image = nib.Nifti1Image(np.ascontiguousarray(array), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


def half_resolution(volume: np.ndarray) -> np.ndarray:
    """(X, Y, Z) -> (X/2, Y/2, Z): each 2x2 in-plane block averaged (a coarser acquisition)."""
    x, y, z = volume.shape
    return volume[: x - x % 2, : y - y % 2].reshape(x // 2, 2, y // 2, 2, z).mean(axis=(1, 3))


def write_patient(folder: Path, brain: np.ndarray, labels: np.ndarray,
                  volumes: dict[str, np.ndarray], coarse_t2: bool) -> dict[str, str]:
    """The patient's five NIfTI files; returns manifest cells relative to the site folder."""
    shape = brain.shape
    cells = {}
    for name, volume in volumes.items():
        if name == "t2" and coarse_t2:
            # a 2x2 block's centre lies half a fine voxel past its first voxel's centre
            data = half_resolution(volume)
            affine = _affine((2 * VOXEL_MM[0], 2 * VOXEL_MM[1], VOXEL_MM[2]), shape, 0.5)
        else:
            data, affine = volume, _affine(VOXEL_MM, shape)
        atomic_write_bytes(folder / f"{name}.nii.gz", _nifti(data.astype(np.float32), affine))
        cells[f"image_{name}"] = f"images/{folder.name}/{name}.nii.gz"
    atomic_write_bytes(folder / "seg.nii.gz", _nifti(labels, _affine(VOXEL_MM, shape)))
    cells["mask"] = f"images/{folder.name}/seg.nii.gz"
    return cells


def write_brats_sites(out: Path, sites: int = 3, patients: int = 8, size: int = 48,
                      seed: int = 0, progress: Callable[[int, int], None] | None = None
                      ) -> list[Path]:
    """Write ``sites`` BraTS-like site folders under ``out`` (field of view ``size`` x ``size``
    x ``size/2`` voxels of 1 x 1 x 2 mm); returns their paths. About 30 % of each site's
    patients are in the test split."""
    if sites < 1 or patients < 2:
        raise MedFedError("--sites/--patients: give at least 1 site and 2 patients per site")
    if size < 24:
        raise MedFedError(f"--size: {size} is too small for a brain with a tumour; give >= 24")
    rng = np.random.default_rng(seed)
    shape = (size, size, size // 2)
    folders, done = [], 0
    for site in range(1, sites + 1):
        site_dir = new_site_dir(Path(out), site)
        records = []
        for number in range(1, patients + 1):
            pid = patient_id(site, number)
            brain, labels = brain_phantom(shape, rng, enhancing=number % 5 != 0)
            volumes = sequences(brain, labels, site, rng)
            cells = write_patient(site_dir / "images" / pid, brain, labels, volumes,
                                  coarse_t2=sites > 1 and site == sites)
            records.append({"patient_id": pid, **cells})
            done += 1
            if progress:
                progress(done, sites * patients)
        frame = pd.DataFrame(records)
        test = set(rng.permutation(patients)[: max(1, round(0.3 * patients))].tolist())
        frame["split"] = ["test" if i in test else "train" for i in range(patients)]
        atomic_write_text(site_dir / MANIFEST, frame.to_csv(index=False))
        folders.append(site_dir)
    return folders
