"""`medfed demo-data imaging`: site folders of real-format files made from synthetic phantoms.

Each patient is a CT-like phantom: a body ellipse of soft tissue, an organ, and (for positives
or segmentation) ellipsoid lesions with their mask. DICOM series carry proper UIDs, geometry
(shuffled file names, so only Image Position Patient orders them) and a site-specific rescale;
masks are DICOM-SEG (DICOM) or NIfTI. Patient names and IDs are planted in headers, file paths
and the manifest so a test can prove none of them leaves the site.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from medfed.datasets.imaging.manifest import LABELS_FILE, MANIFEST
from medfed.errors import MedFedError
from medfed.io import atomic_write_bytes, atomic_write_text

TISSUE_HU, ORGAN_HU, LESION_HU, AIR_HU = 40.0, 70.0, 140.0, -1000.0
SLOPES = (1.0, 0.5, 1.0, 2.0)  # per site: readers must apply Rescale Slope/Intercept
PIXEL_SPACING = (0.8, 1.0, 1.2, 0.9)
SLICE_THICKNESS = 2.5


def patient_id(site: int, number: int) -> str:
    return f"MRN-{site:02d}-{number:04d}"


def patient_name(site: int, number: int) -> str:
    """Planted PHI: a name that would never appear by chance in logs or messages."""
    return f"PHIDOE^JANE{site:02d}X{number:04d}"


def _ellipsoid(shape: tuple[int, ...], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii, strict=True)) <= 1.0


def phantom(shape: tuple[int, ...], n_lesions: int, rng: np.random.Generator,
            noise_hu: float = 12.0) -> tuple[np.ndarray, np.ndarray]:
    """(HU image, lesion mask) of ``shape`` ((slices,) rows, cols): lesions are ellipsoids."""
    size = np.asarray(shape, float)
    center = size / 2 + rng.normal(0, 0.03, len(shape)) * size
    body = _ellipsoid(shape, center, size * rng.uniform(0.40, 0.47, len(shape)))
    image = np.where(body, TISSUE_HU, AIR_HU)
    organ = _ellipsoid(shape, center + size * rng.uniform(-0.12, 0.12, len(shape)),
                       size * rng.uniform(0.12, 0.2, len(shape)))
    image[organ & body] = ORGAN_HU
    mask = np.zeros(shape, np.uint8)
    for _ in range(n_lesions):
        radii = np.maximum(size * rng.uniform(0.08, 0.16, len(shape)), 2.0)
        spot = center + size * rng.uniform(-0.25, 0.25, len(shape))
        mask[_ellipsoid(shape, spot, radii) & body] = 1
    image[mask > 0] = LESION_HU
    image = image + rng.normal(0, noise_hu, shape) * body
    return image.astype(np.float32), mask


def _uid(*keys: object) -> str:
    """A UID derived from ``keys`` (pydicom hashes them): the same demo data, the same UIDs."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[str(k) for k in keys]))


def dicom_slices(image: np.ndarray, site: int, number: int, spacing: float, slope: float,
                 age: int, sex: str, seed: int = 0) -> list:
    """One CT Image Storage dataset per slice of ``image`` (slices, rows, cols) in HU; UIDs
    derived from ``seed``, the patient and the pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    intercept = -1024.0
    stored = np.clip(np.rint((image - intercept) / slope), 0, 65535).astype(np.uint16)
    key = (seed, site, number, hashlib.sha256(stored.tobytes()).hexdigest())
    study, series, frame = _uid(*key, "study"), _uid(*key, "series"), _uid(*key, "frame")
    slices = []
    for k in range(stored.shape[0]):
        sop = _uid(*key, "slice", k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID = patient_name(site, number), patient_id(site, number)
        ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = "19700101", sex, f"{age:03d}Y"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240101", "120000", "", "1"
        ds.ReferringPhysicianName, ds.Manufacturer = "", "MedFed demo"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, k + 1
        ds.SeriesDescription = "demo phantom"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-spacing * stored.shape[2] / 2, -spacing * stored.shape[1] / 2,
                                   -100.0 + k * SLICE_THICKNESS]
        ds.PixelSpacing, ds.SliceThickness = [spacing, spacing], SLICE_THICKNESS
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU"
        ds.PixelData = stored[k].tobytes()
        slices.append(ds)
    return slices


def _dicom_bytes(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dicom_seg(slices: list, mask: np.ndarray) -> bytes:
    """A binary DICOM-SEG of ``mask`` (slices, rows, cols) referencing each source slice."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=slices, pixel_array=mask.astype(bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_number=100,
        series_instance_uid=_uid(slices[0].SeriesInstanceUID, "seg-series"),
        sop_instance_uid=_uid(slices[0].SeriesInstanceUID, "seg"), instance_number=1,
        manufacturer="MedFed demo", manufacturer_model_name="phantom", software_versions="1",
        device_serial_number="0", omit_empty_frames=True)
    _fixed_time(seg, slices[0])
    return _dicom_bytes(seg)


def _fixed_time(seg, source) -> None:
    """The source's study date and time instead of "now" (same seed, same bytes), and the
    dimension organisation UID highdicom draws at random, derived from the source's series."""
    for tag in ("ContentDate", "SeriesDate", "InstanceCreationDate"):
        if tag in seg:
            setattr(seg, tag, source.StudyDate)
    for tag in ("ContentTime", "SeriesTime", "InstanceCreationTime"):
        if tag in seg:
            setattr(seg, tag, source.StudyTime)
    drawn = {str(item.DimensionOrganizationUID) for item in
             seg.get("DimensionOrganizationSequence", [])}
    fixed = {uid: _uid(source.SeriesInstanceUID, "dimensions", i)
             for i, uid in enumerate(sorted(drawn))}
    for element in seg.iterall():
        if element.keyword == "DimensionOrganizationUID" and str(element.value) in fixed:
            element.value = fixed[str(element.value)]
        elif element.keyword == "ContributionDateTime":
            element.value = f"{source.StudyDate}{source.StudyTime}"


def _gz(image: nib.Nifti1Image) -> bytes:
    import gzip

    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


def _write_patient(site_dir: Path, site: int, number: int, image: np.ndarray, mask: np.ndarray,
                   fmt: str, with_mask: bool, age: int, sex: str, seed: int = 0) -> dict:
    """Files of one patient; returns its manifest cells (paths relative to ``site_dir``).
    DICOM UIDs, and so file names, are derived from ``seed``: rerunning gives the same files."""
    pid = patient_id(site, number)
    spacing, slope = PIXEL_SPACING[(site - 1) % 4], SLOPES[(site - 1) % 4]
    folder = Path("images") / pid
    cells: dict[str, str] = {}
    if fmt == "nifti":
        stored = np.rint(image).astype(np.int16)
        if stored.ndim == 2:
            stored = stored[None]
        atomic_write_bytes(site_dir / folder / "image.nii.gz",
                           _gz_image(stored, spacing, patient_name(site, number)))
        cells["image"] = str(folder / "image.nii.gz")
        if with_mask:
            m = mask if mask.ndim == 3 else mask[None]
            atomic_write_bytes(site_dir / folder / "mask.nii.gz", _gz_image(m, spacing, ""))
            cells["mask"] = str(folder / "mask.nii.gz")
        return cells
    volume = image if image.ndim == 3 else image[None]
    slices = dicom_slices(volume, site, number, spacing, slope, age, sex, seed)
    names = [f"IM{random.Random(ds.SOPInstanceUID).randrange(10**6):06d}.dcm" for ds in slices]
    for ds, name in zip(slices, names, strict=True):
        atomic_write_bytes(site_dir / folder / "series" / name, _dicom_bytes(ds))
    cells["image"] = str(folder / "series") if image.ndim == 3 else str(folder / "series" /
                                                                       names[0])
    if with_mask:
        m = mask if mask.ndim == 3 else mask[None]
        atomic_write_bytes(site_dir / folder / "seg.dcm", dicom_seg(slices, m))
        cells["mask"] = str(folder / "seg.dcm")
    return cells


def _gz_image(volume: np.ndarray, spacing: float, descrip: str) -> bytes:
    """(slices, rows, cols) -> gzipped NIfTI, RAS affine as a DICOM reader would derive it."""
    xyz = np.transpose(volume, (2, 1, 0))
    if xyz.shape[2] == 1:
        xyz = xyz[..., 0]
    affine = np.diag([-spacing, -spacing, SLICE_THICKNESS, 1.0])
    affine[:3, 3] = [spacing * volume.shape[2] / 2, spacing * volume.shape[1] / 2, -100.0]
    image = nib.Nifti1Image(np.ascontiguousarray(xyz), affine)
    image.header["descrip"] = descrip[:79].encode()
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return _gz(image)


def new_site_dir(out: Path, site: int) -> Path:
    """``OUT/site-N``, refusing one that already holds a manifest (demo data never
    overwrites a hospital's folder)."""
    site_dir = out / f"site-{site}"
    if (site_dir / MANIFEST).exists():
        raise MedFedError(f"{site_dir}: already holds a {MANIFEST}; choose an empty OUT "
                          "folder (demo data never overwrites a site)")
    return site_dir


def write_demo_sites(out: Path, sites: int = 3, task: str = "classification",
                     fmt: str = "dicom", dims: int = 3, patients: int | None = None,
                     size: int | None = None, seed: int = 0,
                     progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Write ``sites`` site folders under ``out``; returns their paths.

    Classification: label 1 = at least one lesion. Segmentation: every patient has 1-3
    lesions and a mask. Sites differ in pixel spacing, rescale slope, noise and prevalence.
    """
    if task not in ("classification", "segmentation"):
        raise MedFedError(f"--task: {task!r} is neither classification nor segmentation")
    if fmt not in ("dicom", "nifti"):
        raise MedFedError(f"--format: {fmt!r} is neither dicom nor nifti")
    if dims not in (2, 3):
        raise MedFedError(f"--dims: {dims} must be 2 or 3")
    if sites < 1:
        raise MedFedError("--sites: give at least 1 site")
    size = size or (64 if dims == 2 else 32)
    shape = (size, size) if dims == 2 else (max(size // 2, 8), size, size)
    patients = patients or (40 if task == "classification" else 16)
    rng = np.random.default_rng(seed)
    out = Path(out)
    folders, total, done = [], sites * patients, 0
    for site in range(1, sites + 1):
        site_dir = new_site_dir(out, site)
        prevalence = 0.3 + 0.4 * (site - 1) / max(sites - 1, 1)
        records = []
        for number in range(1, patients + 1):
            label = int(rng.random() < prevalence) if task == "classification" else 1
            n_lesions = int(rng.integers(1, 4)) if label else 0
            image, mask = phantom(shape, n_lesions, rng, noise_hu=8.0 + 4.0 * site)
            age, sex = int(rng.integers(30, 85)), "F" if rng.random() < 0.5 else "M"
            cells = _write_patient(site_dir, site, number, image, mask, fmt,
                                   task == "segmentation", age, sex, seed)
            records.append({"patient_id": patient_id(site, number), "image": cells["image"],
                            **({"label": label} if task == "classification" else
                               {"mask": cells["mask"]}),
                            "age": age, "sex": sex})
            done += 1
            if progress:
                progress(done, total)
        frame = pd.DataFrame(records)
        frame["split"] = _patient_split(frame, "label" if task == "classification" else None,
                                        rng)
        atomic_write_text(site_dir / MANIFEST, frame.to_csv(index=False))
        if task == "classification":
            atomic_write_text(site_dir / LABELS_FILE, "0\n1\n")
        folders.append(site_dir)
    return folders


def _patient_split(frame: pd.DataFrame, label: str | None, rng: np.random.Generator,
                   test_fraction: float = 0.3) -> list[str]:
    """About ``test_fraction`` of each label's patients to test (one row per patient here)."""
    split = np.array(["train"] * len(frame), dtype=object)
    groups = frame.groupby(label).indices.values() if label else [np.arange(len(frame))]
    for rows in groups:
        rows = rng.permutation(rows)
        n_test = max(1, int(round(len(rows) * test_fraction))) if len(rows) > 1 else 0
        split[rows[:n_test]] = "test"
    return split.tolist()
