"""MedMNIST v2/v3 (2D and 3D biomedical images, CC BY 4.0) from its official ``.npz`` files.

Options: ``name`` (e.g. breastmnist, pneumoniamnist, dermamnist, adrenalmnist3d,
organmnist3d; see ``FILES``) and ``size`` (28, or 64/128/224 for 2D, 64 for 3D).
Reads ``$MEDFED_DATA_DIR/medmnist/<name>[_<size>].npz``; when absent, downloads it from the
official Zenodo record and checks its MD5 before saving. Keys ``{train,val,test}_images``
and ``..._labels`` (labels shaped (N,) or (N, 1)). The official split is kept under every
partition scheme: train + val are training rows, test rows are test rows.
x: (N, C, H, W) or (N, C, D, H, W) float32 in [0, 1]; y: (N,) int64.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np

from medfed.datasets.base import Dataset, TableDataset
from medfed.datasets.files import data_dir
from medfed.errors import MedFedError
from medfed.io import atomic_write_bytes

RECORD = "https://zenodo.org/records/10519652/files"
RAM_BYTES = 512 * 2**20  # larger float32 arrays become a memmap cache on disk

# name -> (classes, {size: md5 of the official file}); from the medmnist package's INFO
FILES: dict[str, tuple[list[str], dict[int, str]]] = {
    "breastmnist": (["malignant", "normal, benign"], {
        28: "750601b1f35ba3300ea97c75c52ff8f6", 64: "742edef2a1fd1524b2efff4bd7ba9364",
        128: "363e4b3f8d712e9b5de15470a2aaadf1", 224: "b56378a6eefa9fed602bb16d192d4c8b"}),
    "pneumoniamnist": (["normal", "pneumonia"], {
        28: "28209eda62fecd6e6a2d98b1501bb15f", 64: "8f4eceb4ccffa70c672198ea285246c6",
        128: "05b46931834c231683c68f40c47b2971", 224: "d6a3c71de1b945ea11211b03746c1fe1"}),
    "dermamnist": ([
        "actinic keratoses", "basal cell carcinoma", "benign keratosis-like lesions",
        "dermatofibroma", "melanoma", "melanocytic nevi", "vascular lesions"], {
        28: "0744692d530f8e62ec473284d019b0c7", 64: "b70a2f5635c6199aeaa28c31d7202e1f",
        128: "2defd784463fa5243564e855ed717de1", 224: "8974907d8e169bef5f5b96bc506ae45d"}),
    "bloodmnist": ([
        "basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte",
        "monocyte", "neutrophil", "platelet"], {
        28: "7053d0359d879ad8a5505303e11de1dc", 64: "2b94928a2ae4916078ca51e05b6b800b",
        128: "adace1e0ed228fccda1f39692059dd4c", 224: "b718ff6835fcbdb22ba9eacccd7b2601"}),
    "octmnist": ([
        "choroidal neovascularization", "diabetic macular edema", "drusen", "normal"], {
        28: "c68d92d5b585d8d81f7112f81e2d0842", 64: "e229e9440236b774d9f0dfef9d07bdaf",
        128: "0a97e76651ace45c5d943ee3f65b63ae", 224: "abc493b6d529d5de7569faaef2773ba3"}),
    "retinamnist": (["0", "1", "2", "3", "4"], {
        28: "bd4c0672f1bba3e3a89f0e4e876791e4", 64: "afda852cc34dcda56f86ad2b2457dbcc",
        128: "e48e916a24454daf90583d4e6efb1a18", 224: "eae7e3b6f3fcbda4ae613ebdcbe35348"}),
    "pathmnist": ([
        "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
        "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma"], {
        28: "a8b06965200029087d5bd730944a56c1", 64: "55aa9c1e0525abe5a6b9d8343a507616",
        128: "ac42d08fb904d92c244187169d1fd1d9", 224: "2c51a510bcdc9cf8ddb2af93af1eadec"}),
    "organamnist": ([
        "bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
        "liver", "lung-left", "lung-right", "pancreas", "spleen"], {
        28: "68e3f8846a6bd62f0c9bf841c0d9eacc", 64: "2dcccc29b88e6da5a01161ef20cda288",
        128: "eeae80d0a227a8d099027e1b3cfd3b60", 224: "50747347e05c87dd3aaf92c49f9f3170"}),
    "adrenalmnist3d": (["normal", "hyperplasia"], {
        28: "bbd3c5a5576322bc4cdfea780653b1ce", 64: "17721accfe9fb005146a47d33bc54b2f"}),
    "nodulemnist3d": (["benign", "malignant"], {
        28: "8755a7e9e05a4d9ce80a24c3e7a256f3", 64: "c47c5b7d457bf6332200d2ea6d64ecd8"}),
    "vesselmnist3d": (["vessel", "aneurysm"], {
        28: "b41fd4f7e7e2feedddb201585ecafa1b", 64: "6bb274a8846e1097066dcd64e2c4520f"}),
    "synapsemnist3d": (["inhibitory synapse", "excitatory synapse"], {
        28: "1235b78a3cd6280881dd7850a78eadb6", 64: "43bd14ebf3af9d3dd072446fedc14d5e"}),
    "organmnist3d": ([
        "liver", "kidney-right", "kidney-left", "femur-right", "femur-left", "bladder",
        "heart", "lung-right", "lung-left", "spleen", "pancreas"], {
        28: "a0c5a1ff56af4f155c46d46fbb45a2fe", 64: "58a2205adf14a9d0a189cb06dc78bf10"}),
    "fracturemnist3d": (["buckle rib fracture", "nondisplaced rib fracture",
                         "displaced rib fracture"], {
        28: "6aa7b0143a6b42da40027a9dda61302f", 64: "f01d7e6316aedf4210da0da5b7437b42"}),
}


def file_name(name: str, size: int) -> str:
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def md5_of(payload: bytes) -> str:
    return hashlib.md5(payload, usedforsecurity=False).hexdigest()


def download(name: str, size: int, dest: Path, timeout: float = 60.0) -> Path:
    """Fetch the official file into ``dest``, refusing it unless its MD5 matches."""
    import urllib.request

    url = f"{RECORD}/{file_name(name, size)}?download=1"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (https)
            payload = response.read()
    except OSError as exc:
        raise MedFedError(f"{dest}: not found and the download from {url} failed "
                          f"({exc.__class__.__name__}); put the file there by hand or set "
                          "MEDFED_DATA_DIR to a folder with medmnist/") from None
    expected = FILES[name][1][size]
    if md5_of(payload) != expected:
        raise MedFedError(f"{url}: MD5 {md5_of(payload)} is not the official {expected}; "
                          "the file was not saved (retry later)")
    atomic_write_bytes(dest, payload)
    return dest


def locate(name: str, size: int) -> Path:
    """The local ``.npz`` (a user's copy is trusted as is), downloading it when absent."""
    if name not in FILES:
        raise MedFedError(f"dataset.options.name: unknown MedMNIST dataset {name!r}; choose one "
                          f"of {', '.join(FILES)}")
    if size not in FILES[name][1]:
        raise MedFedError(f"dataset.options.size: {name} comes in sizes "
                          f"{sorted(FILES[name][1])}, not {size}")
    path = data_dir("medmnist") / file_name(name, size)
    return path if path.is_file() else download(name, size, path)


def _labels(raw: np.ndarray, path: Path, key: str) -> np.ndarray:
    labels = np.asarray(raw)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise MedFedError(f"{path}: {key} has shape {labels.shape}; MedFed reads single-label "
                          "MedMNIST sets (labels (N,) or (N, 1)), not multi-label ones")
    return labels.astype(np.int64)


def _channels_first(images: np.ndarray, three_d: bool) -> np.ndarray:
    """(N, H, W) -> (N, 1, H, W); (N, H, W, 3) -> (N, 3, H, W); (N, D, H, W) -> (N, 1, ...)."""
    if not three_d and images.ndim == 4 and images.shape[-1] == 3:
        return np.moveaxis(images, -1, 1)
    return images[:, None]


def _to_float(images: np.ndarray, cache: Path) -> np.ndarray:
    """uint8 -> float32 in [0, 1]; large sets become a float32 memmap cached next to ``cache``."""
    shape = images.shape
    if 4 * int(np.prod(shape)) <= RAM_BYTES:
        return images.astype(np.float32) / 255.0
    cache.parent.mkdir(parents=True, exist_ok=True)
    if not cache.is_file() or cache.stat().st_size != 4 * int(np.prod(shape)):
        tmp = cache.with_suffix(".tmp")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        for i in range(0, shape[0], 256):
            out[i:i + 256] = images[i:i + 256].astype(np.float32) / 255.0
        out.flush()
        del out
        os.replace(tmp, cache)
    return np.load(cache, mmap_mode="r")


def read_npz(path: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x uint8 channels-first, y (N,), split "train"/"test") from a MedMNIST ``.npz``."""
    try:
        archive = np.load(path)
        parts = {split: (archive[f"{split}_images"], archive[f"{split}_labels"])
                 for split in ("train", "val", "test")}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise MedFedError(f"{path}: not a readable .npz ({exc.__class__.__name__}); delete it "
                          "and let MedFed download it again, or copy a good one") from None
    except KeyError as exc:
        raise MedFedError(f"{path}: missing key {exc}; a MedMNIST file has train/val/test "
                          "_images and _labels") from None
    three_d = name.endswith("3d")
    xs, ys, splits = [], [], []
    for split, (images, labels) in parts.items():
        labels = _labels(labels, path, f"{split}_labels")
        if len(images) != len(labels):
            raise MedFedError(f"{path}: {len(images)} {split} images but {len(labels)} labels")
        xs.append(_channels_first(images, three_d))
        ys.append(labels)
        splits.append(np.full(len(labels), "test" if split == "test" else "train", object))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(splits)


def load(name: str = "breastmnist", size: int = 28) -> TableDataset:
    """Load one MedMNIST set (see the module docstring)."""
    path = locate(name, int(size))
    x, y, split = read_npz(path, name)
    classes = FILES[name][0]
    if y.min() < 0 or y.max() >= len(classes):
        raise MedFedError(f"{path}: labels {int(y.min())}..{int(y.max())} outside 0.."
                          f"{len(classes) - 1} of {name}; is it the right file?")
    cache = Path(os.environ.get("MEDFED_CACHE_DIR") or Path.home() / ".cache" / "medfed")
    stat = path.stat()  # the cache is keyed by the file's size and time: a new file, a new cache
    return TableDataset(
        name="medmnist", task="binary" if len(classes) == 2 else "multiclass",
        x=_to_float(x, cache / "medmnist" / f"{path.stem}_{stat.st_size}_{int(stat.st_mtime)}.npy"),
        y=y, feature_names=[], split=split, keep_split=True, class_names=list(classes),
        standardize=False, source=str(path),
        unit=None)  # no patient ids: several images may show one patient (e.g. ChestMNIST)


DATASET = Dataset(
    name="medmnist", task="binary",  # multiclass for the sets with more than two labels
    default_model="small_cnn",
    description="MedMNIST 2D/3D medical images (option name: breastmnist, adrenalmnist3d, ...)",
    natural_sites=False, load_federation=load)
