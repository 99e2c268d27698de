"""`medfed demo-data multimodal`: site folders of phantom images + clinical columns per patient.

The label depends on BOTH modalities, so fusing them is measurably better than either alone:
``logit = 3.0 * lesion + 1.1 * crp_z + 0.9 * smoker + 0.4 * age_z - 1.6 + noise`` where
``lesion`` is an ellipsoid lesion in the patient's image (MedFed's imaging phantoms, 2D
NIfTI) and the rest are clinical columns (``age``, ``crp`` numeric with missing values,
``sex``, ``smoker`` categorical). ``missing_image`` of the patients have no scan (empty
``image`` cell); the last ``clinical_only_sites`` sites have no images at all; ~5 % of imaged
patients have no clinical values (their clinical cells are empty).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from medfed.datasets.imaging.demo import (
    _patient_split,
    _write_patient,
    new_site_dir,
    patient_id,
    phantom,
)
from medfed.datasets.imaging.manifest import LABELS_FILE, MANIFEST
from medfed.errors import MedFedError
from medfed.io import atomic_write_text

CLINICAL = {"numeric": ["age", "crp"], "categorical": ["sex", "smoker"]}


def _clinical(rng: np.random.Generator) -> tuple[dict, float]:
    """One patient's clinical cells and their contribution to the label's logit."""
    age = float(rng.normal(62, 12))
    crp_z = float(rng.normal(0, 1))
    smoker = int(rng.random() < 0.35)
    score = 1.1 * crp_z + 0.9 * smoker + 0.4 * (age - 62) / 12
    cells = {"age": round(age), "crp": round(float(np.exp(1.5 + 0.8 * crp_z)), 2),
             "sex": "F" if rng.random() < 0.5 else "M", "smoker": "yes" if smoker else "no"}
    if rng.random() < 0.1:
        cells["crp"] = None  # a lab value not measured
    if rng.random() < 0.05:
        cells["smoker"] = None
    return cells, score


def write_multimodal_sites(out: Path, sites: int = 4, patients: int = 120,
                           missing_image: float = 0.3, clinical_only_sites: int = 1,
                           size: int = 32, seed: int = 0,
                           progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Write ``sites`` multimodal site folders under ``out``; returns their paths."""
    if sites < 1 or not 0 <= clinical_only_sites < sites:
        raise MedFedError("--clinical-only-sites: must be at least 0 and fewer than --sites "
                          "(at least one site needs images)")
    if not 0.0 <= missing_image < 1.0:
        raise MedFedError("--missing-image: give a share in [0, 1)")
    rng = np.random.default_rng(seed)
    out = Path(out)
    folders, total, done = [], sites * patients, 0
    for site in range(1, sites + 1):
        site_dir = new_site_dir(out, site)
        imaging = site <= sites - clinical_only_sites
        records = []
        for number in range(1, patients + 1):
            cells, score = _clinical(rng)
            lesion = int(rng.random() < 0.45)
            logit = 3.0 * lesion + score - 1.6 + rng.normal(0, 0.5)
            label = int(logit > 0)
            record = {"patient_id": patient_id(site, number), "image": "", "label": label}
            if imaging and rng.random() >= missing_image:
                image, mask = phantom((size, size), lesion * int(rng.integers(1, 3)), rng,
                                      noise_hu=8.0 + 3.0 * site)
                written = _write_patient(site_dir, site, number, image, mask, "nifti", False,
                                         int(cells["age"]), str(cells["sex"]))
                record["image"] = written["image"]
                if rng.random() < 0.05:  # imaged, but no clinical record
                    cells = dict.fromkeys(cells)
            records.append({**record, **cells})
            done += 1
            if progress:
                progress(done, total)
        frame = pd.DataFrame(records)
        frame["split"] = _patient_split(frame, "label", rng)
        site_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(site_dir / MANIFEST, frame.to_csv(index=False))
        atomic_write_text(site_dir / LABELS_FILE, "0\n1\n")
        folders.append(site_dir)
    return folders
