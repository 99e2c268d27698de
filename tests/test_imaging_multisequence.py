"""Multi-sequence studies as channels, BraTS regions from raw mask labels, per-channel
normalisation, cropping to the foreground, and sequences on different grids."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from medfed.datasets import load_dataset
from medfed.datasets.imaging.check import check_site
from medfed.datasets.imaging.demo_brats import (
    BRATS_REGIONS,
    half_resolution,
    write_brats_sites,
)
from medfed.datasets.imaging.geometry import resample_onto
from medfed.datasets.imaging.manifest import manifest_rows, read_manifest
from medfed.datasets.imaging.site_folders import preprocess
from medfed.datasets.imaging.study import crop_foreground, parse_mask_labels, region_masks
from medfed.errors import MedFedError
from medfed.tasks import get_task


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    return write_brats_sites(tmp_path_factory.mktemp("brats"), sites=2, patients=4, size=32)


def options(roots, cache, **extra) -> dict:
    return {"roots": [str(r) for r in roots], "task": "segmentation",
            "spatial_size": [16, 16, 8], "crop_foreground": True, "spacing": [1.0, 1.0, 2.0],
            "mask_labels": BRATS_REGIONS, "cache_dir": str(cache), **extra}


def test_channel_columns_and_semicolon_lists(tmp_path):
    (tmp_path / "a").mkdir()
    pd.DataFrame({"patient_id": ["P1"], "image_id": ["x17"], "image_flair": ["f.nii.gz"],
                  "image_t1": ["t.nii.gz"], "mask": ["m.nii.gz"]}).to_csv(
        tmp_path / "a" / "manifest.csv", index=False)
    (row,) = manifest_rows(tmp_path / "a", read_manifest(tmp_path / "a"))
    assert row.channels == ["flair", "t1"]  # image_id is metadata, not a sequence
    assert row.images == [tmp_path / "a" / "f.nii.gz", tmp_path / "a" / "t.nii.gz"]
    (tmp_path / "b").mkdir()
    pd.DataFrame({"patient_id": ["P1"], "image": ["f.nii.gz; t.nii.gz"], "label": ["1"]}
                 ).to_csv(tmp_path / "b" / "manifest.csv", index=False)
    (row,) = manifest_rows(tmp_path / "b", read_manifest(tmp_path / "b"))
    assert [p.name for p in row.images] == ["f.nii.gz", "t.nii.gz"] and len(row.channels) == 2


def test_regions_from_raw_labels_are_nested_binary_channels():
    raw = np.array([[0, 1, 2, 3, 4, 2]])[None]  # (1, 1, 6)
    regions = region_masks(raw, parse_mask_labels(BRATS_REGIONS))
    np.testing.assert_array_equal(regions[:, 0], [[0, 1, 1, 1, 1, 1], [0, 1, 0, 1, 1, 0],
                                                  [0, 0, 0, 0, 1, 0]])
    with pytest.raises(MedFedError, match="mask_labels.et: give raw mask values >= 1"):
        parse_mask_labels({"et": [0]})


def test_zscore_per_channel_over_nonzero_voxels_and_crop_to_foreground():
    rng = np.random.default_rng(0)
    image = np.zeros((2, 20, 20, 10), np.float32)
    image[0, 5:15, 4:12, 2:8] = rng.normal(300, 40, (10, 8, 6))  # channel scales differ 10x
    image[1, 5:15, 4:12, 2:8] = rng.normal(3000, 500, (10, 8, 6))
    mask = np.zeros((20, 20, 10), np.int64)
    mask[8:10, 6:8, 4:6] = 4
    cropped, cmask = crop_foreground(image, mask[None])  # box of voxels > 0, 2 voxels margin
    assert cropped.shape == (2, 14, 12, 10) and cmask.shape == (1, 14, 12, 10)
    assert cmask.sum() == mask.sum()  # the lesion is inside the box, whole
    x, y = preprocess(image, mask, (14, 12, 10), None, "zscore", crop=True, channels=True)
    inside = cropped[0] > 0
    for c in range(2):
        assert x[c][inside].mean() == pytest.approx(0.0, abs=1e-4)
        assert x[c][inside].std() == pytest.approx(1.0, abs=1e-3)
        assert np.all(x[c][~inside] == 0)  # background stays 0 (nonzero=True)
    np.testing.assert_array_equal(y[0], cmask[0])


def test_coarser_sequence_resampled_onto_the_first_grid_in_world_coordinates():
    """A linear intensity ramp survives 2x2 block averaging and resampling exactly: the
    coarse grid is placed half a fine voxel off, as its affine says."""
    x, y, z = np.meshgrid(np.arange(16), np.arange(12), np.arange(4), indexing="ij")
    fine = (3.0 * x + 5.0 * y + 7.0 * z).astype(np.float32)
    fine_affine = np.diag([1.0, 1.0, 2.0, 1.0])
    coarse_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    coarse_affine[:2, 3] = 0.5
    back = resample_onto(half_resolution(fine), coarse_affine, fine_affine, fine.shape)
    np.testing.assert_allclose(back[1:-1, 1:-1], fine[1:-1, 1:-1], atol=1e-3)


def test_brats_like_sites_load_as_four_channels_and_three_regions(brats, tmp_path):
    data = load_dataset("site-folders", options(brats, tmp_path))
    assert data.task == "regions:wt,tc,et" and data.class_names == ["wt", "tc", "et"]
    assert data.x.shape == (8, 4, 16, 16, 8) and data.y.shape == (8, 3, 16, 16, 8)
    y = np.asarray(data.y)
    assert np.all(y[:, 1] <= y[:, 0]) and np.all(y[:, 2] <= y[:, 1])  # ET in TC in WT
    assert y[:, 0].sum() > y[:, 1].sum() > y[:, 2].sum() > 0
    # site 2's T2 is stored at half resolution: resampled, it shows the same tumour as FLAIR
    t2, flair = np.asarray(data.x[4:, 3]), np.asarray(data.x[4:, 0])
    assert np.corrcoef(t2.ravel(), flair.ravel())[0, 1] > 0.5
    # cropped to the brain (2 voxels margin): brain from edge to edge of the model's input
    assert (np.asarray(data.x[:, 0, 8, 8, 1:-1]) != 0).all()


def test_sequence_on_another_grid_is_named_without_spacing(brats, tmp_path):
    with pytest.raises(MedFedError, match="sequence 't2' is on another grid .*set "
                       "dataset.options.spacing"):
        load_dataset("site-folders", options(brats[1:], tmp_path, spacing=None))
    result = check_site(brats[1])
    assert result.ok
    warnings = result.warnings()
    assert len(warnings) == 4 and "sequence 't2' is on another grid (16x16x16 at 2x2x2 mm)" \
        in warnings[0]
    assert check_site(brats[0]).warnings() == []


def test_a_row_missing_a_sequence_is_a_problem(brats, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(brats[0], site)
    frame = pd.read_csv(site / "manifest.csv")
    frame.loc[1, "image_t1c"] = "images/none.nii.gz"
    frame.to_csv(site / "manifest.csv", index=False)
    lines = check_site(site).lines()
    assert len(lines) == 1 and lines[0].startswith("row 2: images/none.nii.gz: file not found")


def test_region_task_loss_and_dice_per_region():
    import torch

    task = get_task("regions:wt,tc,et")
    y = np.zeros((2, 3, 8, 8), np.int64)
    y[:, 0, 2:6, 2:6] = 1
    y[:, 1, 3:5, 3:5] = 1
    y[0, 2, 3, 3] = 1
    pred = y.copy()
    pred[1, 1] = 0  # image 2: tumour core missed
    metrics = task.metrics(y, pred)
    assert metrics["dice_wt"] == 1.0 and metrics["dice_tc"] == pytest.approx(0.5)
    assert metrics["dice_et"] == 1.0  # image 2 has no ET and predicts none: not counted
    assert metrics["dice"] == pytest.approx(2.5 / 3)
    right = torch.as_tensor(np.where(y > 0, 8.0, -8.0), dtype=torch.float32)
    assert task.loss(right, torch.as_tensor(y)) < 0.05 < task.loss(-right, torch.as_tensor(y))
    assert task.n_outputs(3) == 3
    np.testing.assert_array_equal(task.scores(right).numpy(), y)


def test_four_sequence_phantoms_train_wt_tc_et_federatedly(tmp_path):
    """3 hospitals, 4-sequence phantoms, a UNet with one sigmoid output per region: the
    federated model finds the whole tumour and its core on every site's test patients, and the
    report gives Dice per region per site."""
    from medfed.config import validate
    from medfed.reports.report import markdown
    from medfed.simulation.runner import run_simulation

    roots = write_brats_sites(tmp_path / "data", sites=3, patients=6, size=32, seed=1)
    cfg = validate({
        "dataset": {"name": "site-folders", "options": options(roots, tmp_path / "cache")},
        "partition": {"scheme": "natural", "sites": 3, "min_site_size": 4},
        "model": {"name": "unet", "channels": [8, 16, 32], "strides": [2, 2]},
        "strategy": {"name": "fedavg", "min_sites": 3},
        "train": {"local_epochs": 4, "batch_size": 2, "optimizer": "adam", "lr": 0.01},
        "baselines": {"centralized": False, "local_only": False},
        "rounds": 4, "seed": 0})
    report = run_simulation(cfg).report
    assert report["task"] == "regions:wt,tc,et"
    fed = report["metrics"]["federated"]
    assert set(fed["per_site"]) == {"site-1", "site-2", "site-3"}
    for site in fed["per_site"].values():
        assert {"dice_wt", "dice_tc", "dice_et"} <= set(site)
        assert site["dice_wt"] > 0.5  # a 4-voxel-wide tumour in 16x16x8: not by chance
    assert fed["pooled"]["dice_tc"] > 0.3
    text = markdown(report)
    assert "## Dice per site and region (test images)" in text and "federated WT" in text
    assert "WT = mask values [1, 2, 3, 4]" in text


def test_cli_writes_brats_demo_and_data_check_names_the_coarse_t2(tmp_path, monkeypatch,
                                                                  capsys):
    import json

    from tests.conftest import run_cli

    code, out, _ = run_cli(["demo-data", "brats", str(tmp_path / "demo"), "--sites", "2",
                            "--patients", "2", "--size", "24"], monkeypatch, capsys)
    assert code == 0 and "wrote" in out
    frame = pd.read_csv(tmp_path / "demo" / "site-1" / "manifest.csv")
    assert list(frame.columns) == ["patient_id", "image_flair", "image_t1", "image_t1c",
                                   "image_t2", "mask", "split"]
    code, out, _ = run_cli(["data", "check", str(tmp_path / "demo" / "site-2"), "--json"],
                           monkeypatch, capsys)
    result = json.loads(out)
    assert code == 0 and result["ok"] and result["summary"]["channels"] == {"4": 2}
    assert len(result["warnings"]) == 2 and "'t2' is on another grid" in result["warnings"][0]
    code, out, _ = run_cli(["data", "inspect", str(tmp_path / "demo" / "site-2"), "--json",
                            "--out", str(tmp_path / "m.png")], monkeypatch, capsys)
    assert code == 0 and "'t2' is on another grid" in json.loads(out)["warnings"]["row 1"]
