"""MedMNIST loader on files the tests write (both label shapes, 2D gray/RGB and 3D) and on the
real BreastMNIST / AdrenalMNIST3D copies; a short federated run on BreastMNIST."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from medfed.datasets import load_dataset
from medfed.datasets.imaging.medmnist import md5_of
from medfed.datasets.sites import build_sites
from medfed.errors import MedFedError

COUNTS = {"train": 12, "val": 4, "test": 6}


def write_npz(folder, name, image_shape, labels_2d, n_classes=2, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in COUNTS.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *image_shape), dtype=np.uint8)
        labels = np.arange(n) % n_classes
        arrays[f"{split}_labels"] = labels[:, None] if labels_2d else labels
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / f"{name}.npz", **arrays)
    return arrays


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFED_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MEDFED_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.parametrize("labels_2d", [False, True])
def test_2d_gray_file_both_label_shapes(data_root, labels_2d):
    arrays = write_npz(data_root / "medmnist", "breastmnist", (28, 28), labels_2d)
    data = load_dataset("medmnist", {"name": "breastmnist"})
    assert data.x.shape == (22, 1, 28, 28) and data.x.dtype == np.float32
    assert data.y.shape == (22,) and data.y.dtype == np.int64
    assert data.task == "binary" and not data.standardize
    assert data.x.min() >= 0 and data.x.max() <= 1
    np.testing.assert_allclose(data.x[0, 0], arrays["train_images"][0] / 255.0, atol=1e-6)
    assert (data.split == "train").sum() == 16 and (data.split == "test").sum() == 6
    # the official split survives a Dirichlet partition: every test row is an official one
    sites = build_sites(data, "dirichlet", 2, alpha=5.0, min_size=4, seed=1)
    assert sum(s.n_test for s in sites) == 6 and sum(s.n_train for s in sites) == 16


def test_rgb_multiclass_and_3d_files(data_root):
    write_npz(data_root / "medmnist", "dermamnist", (28, 28, 3), True, n_classes=7)
    derm = load_dataset("medmnist", {"name": "dermamnist"})
    assert derm.x.shape == (22, 3, 28, 28) and derm.task == "multiclass"
    assert len(derm.class_names) == 7
    write_npz(data_root / "medmnist", "adrenalmnist3d", (8, 8, 8), True)
    vol = load_dataset("medmnist", {"name": "adrenalmnist3d"})
    assert vol.x.shape == (22, 1, 8, 8, 8)


def test_large_sets_become_a_memmap_cache(data_root, monkeypatch):
    import medfed.datasets.imaging.medmnist as mm

    monkeypatch.setattr(mm, "RAM_BYTES", 1000)
    write_npz(data_root / "medmnist", "nodulemnist3d", (8, 8, 8), False)
    first = load_dataset("medmnist", {"name": "nodulemnist3d"})
    assert isinstance(first.x, np.memmap)
    assert list((data_root / "cache" / "medmnist").glob("*.npy"))
    again = load_dataset("medmnist", {"name": "nodulemnist3d"})
    np.testing.assert_array_equal(np.asarray(first.x), np.asarray(again.x))


def test_bad_names_sizes_files_and_labels(data_root, monkeypatch):
    with pytest.raises(MedFedError, match="unknown MedMNIST"):
        load_dataset("medmnist", {"name": "catmnist"})
    with pytest.raises(MedFedError, match="sizes"):
        load_dataset("medmnist", {"name": "adrenalmnist3d", "size": 128})
    (data_root / "medmnist").mkdir()
    (data_root / "medmnist" / "pneumoniamnist.npz").write_bytes(b"not a zip")
    with pytest.raises(MedFedError, match="not a readable"):
        load_dataset("medmnist", {"name": "pneumoniamnist"})
    write_npz(data_root / "medmnist", "octmnist", (28, 28), False, n_classes=9)
    with pytest.raises(MedFedError, match="outside"):
        load_dataset("medmnist", {"name": "octmnist"})

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(MedFedError, match="download"):
        load_dataset("medmnist", {"name": "bloodmnist"})


def test_download_refuses_a_wrong_checksum(data_root, monkeypatch):
    import io

    payload = b"pretend npz"

    def fake(url, timeout):
        assert url.startswith("https://zenodo.org/records/10519652/files/breastmnist.npz")
        return io.BytesIO(payload)

    monkeypatch.setattr("urllib.request.urlopen", fake)
    with pytest.raises(MedFedError, match="MD5"):
        load_dataset("medmnist", {"name": "breastmnist"})
    assert not (data_root / "medmnist" / "breastmnist.npz").exists()
    assert md5_of(b"") == "d41d8cd98f00b204e9800998ecf8427e"


def test_real_breastmnist(shared_data, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDFED_DATA_DIR", str(shared_data))
    if not (shared_data / "medmnist" / "breastmnist.npz").is_file():
        pytest.skip("breastmnist.npz absent")
    data = load_dataset("medmnist", {"name": "breastmnist"})
    assert data.x.shape == (780, 1, 28, 28)
    assert (data.split == "test").sum() == 156
    assert data.class_names[0] == "malignant"


def test_real_adrenal3d(shared_data, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDFED_DATA_DIR", str(shared_data))
    if not (shared_data / "medmnist" / "adrenalmnist3d.npz").is_file():
        pytest.skip("adrenalmnist3d.npz absent")
    data = load_dataset("medmnist", {"name": "adrenalmnist3d"})
    assert data.x.shape == (1584, 1, 28, 28, 28)
    assert np.bincount(data.y[data.split == "train"][:1188]).tolist() == [929, 259]


def test_short_simulation_on_real_breastmnist(shared_data, monkeypatch, tmp_path):
    from medfed.cli.main import app

    monkeypatch.setenv("MEDFED_DATA_DIR", str(shared_data))
    if not (shared_data / "medmnist" / "breastmnist.npz").is_file():
        pytest.skip("breastmnist.npz absent")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "simulate", "configs/medmnist-breast.yaml", "--out", str(out), "--no-track", "--json",
        "--set", "rounds=4", "--set", "model.channels=[8,16]",
        "--set", "baselines.centralized=false"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "binary" and len(report["sites"]) == 3
    assert sum(s["n_test"] for s in report["sites"]) == 156
    auroc = report["metrics"]["federated"]["pooled"]["auroc"]
    # four short rounds of a tiny CNN learn from real ultrasound (measured: 0.48 -> 0.75)
    first = report["history"][0]["pooled"]["auroc"]
    assert 0.6 < auroc <= 1.0 and auroc > first
    assert "local_only" in report["metrics"] and len(report["history"]) == 4
