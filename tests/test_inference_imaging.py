"""predict / validate / explain on imaging: lesion segmentation from DICOM series (NIfTI
masks on the original grid and DICOM-SEG output), the two-stage segment -> crop -> classify
pipeline on phantoms, and the one-line refusals of mismatched studies."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from tests.conftest import run_cli
from tests.inference_data import simulate, tamper, write_yaml


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """DICOM CT phantoms at two sites (16 x 16 x 8 voxels) and a 1-round UNet."""
    from medfed.datasets.imaging.demo import write_demo_sites

    root = tmp_path_factory.mktemp("seg")
    sites = write_demo_sites(root / "data", sites=2, task="segmentation", fmt="dicom",
                             dims=3, patients=5, size=16, seed=1)
    config = write_yaml(root / "seg.yaml", {
        "name": "seg-test",
        "dataset": {"name": "site-folders", "options": {
            "roots": [str(s) for s in sites], "task": "segmentation",
            "spatial_size": [16, 16, 8], "window": "soft_tissue",
            "cache_dir": str(root / "cache")}},
        "partition": {"scheme": "natural", "sites": 2, "min_site_size": 2},
        "model": {"name": "unet", "channels": [8, 16], "strides": [2], "num_res_units": 0},
        "strategy": {"name": "fedavg", "min_sites": 2},
        "train": {"local_epochs": 1, "batch_size": 2, "optimizer": "adam", "lr": 0.005},
        "rounds": 1, "baselines": {"local_only": False, "centralized": False}})
    return simulate(config, root / "run"), sites


def test_predict_dicom_series_writes_nifti_and_dicom_seg(seg, tmp_path, monkeypatch, capsys):
    import highdicom as hd
    import nibabel as nib

    from medfed.datasets.imaging.volume import load_image, load_mask

    model, sites = seg
    series = sites[0] / "images" / "MRN-01-0001" / "series"
    code, _, err = run_cli(["predict", str(model), str(series), "--out", str(tmp_path / "p")],
                           monkeypatch, capsys)
    assert code == 0, err
    row = pd.read_csv(tmp_path / "p" / "predictions.csv").iloc[0]
    volume = load_image(series)
    mask = nib.load(tmp_path / "p" / row["mask"])
    assert mask.shape == volume.shape and np.allclose(mask.affine, volume.affine)
    assert int(np.asarray(mask.dataobj).sum()) == row["voxels_1"]
    dicom_seg = tmp_path / "p" / row["dicom_seg"]
    read_back = hd.seg.segread(dicom_seg)
    referenced = [uid for _, _, uid in read_back.get_source_image_uids()]
    assert sorted(referenced) == sorted(volume.dicom.sop_uids)
    assert read_back.SeriesInstanceUID != volume.dicom.series_uid
    # the DICOM-SEG's frames, mapped by referenced SOP Instance UID, are the NIfTI mask
    np.testing.assert_array_equal(load_mask(dicom_seg, volume), np.asarray(mask.dataobj))


def test_dicom_seg_of_a_real_ct_series_references_its_slices(seg, shared_data, tmp_path,
                                                             monkeypatch, capsys):
    """A real GE CT series (3 slices, 512 x 512): the DICOM-SEG written for it reads back
    with highdicom, references exactly its SOP Instance UIDs and maps onto its grid."""
    import highdicom as hd
    import nibabel as nib

    from medfed.datasets.imaging.volume import load_image, load_mask

    model, _ = seg
    series = shared_data / "dicom-real" / "ct3slice_liver_dcmqi" / "series"
    code, _, err = run_cli(["predict", str(model), str(series), "--out", str(tmp_path / "p")],
                           monkeypatch, capsys)
    assert code == 0, err
    row = pd.read_csv(tmp_path / "p" / "predictions.csv").iloc[0]
    volume = load_image(series)
    assert volume.shape == (512, 512, 3)
    read_back = hd.seg.segread(tmp_path / "p" / row["dicom_seg"])
    assert sorted(u for _, _, u in read_back.get_source_image_uids()) == sorted(
        volume.dicom.sop_uids)
    mask = np.asarray(nib.load(tmp_path / "p" / row["mask"]).dataobj)
    np.testing.assert_array_equal(load_mask(tmp_path / "p" / row["dicom_seg"], volume), mask)


def test_predict_a_folder_of_nifti_studies(seg, tmp_path, monkeypatch, capsys):
    import nibabel as nib

    from medfed.datasets.imaging.volume import load_image

    model, sites = seg
    (tmp_path / "studies").mkdir()
    shapes = {}
    for pid in ("MRN-02-0001", "MRN-02-0002"):
        volume = load_image(sites[1] / "images" / pid / "series")
        nib.save(nib.Nifti1Image(volume.array, volume.affine),
                 tmp_path / "studies" / f"{pid}.nii.gz")
        shapes[pid] = volume.shape
    code, _, err = run_cli(["predict", str(model), str(tmp_path / "studies"), "--out",
                            str(tmp_path / "p")], monkeypatch, capsys)
    assert code == 0, err
    preds = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert preds["id"].tolist() == list(shapes) and "dicom_seg" not in preds.columns
    for pid, shape in shapes.items():
        assert nib.load(tmp_path / "p" / "masks" / f"{pid}.nii.gz").shape == shape


def test_predict_site_folder_streams_every_study(seg, tmp_path, monkeypatch, capsys):
    model, sites = seg
    code, _, err = run_cli(["predict", str(model), str(sites[1]), "--out", str(tmp_path / "p")],
                           monkeypatch, capsys)
    assert code == 0, err
    preds = pd.read_csv(tmp_path / "p" / "predictions.csv")
    manifest = pd.read_csv(sites[1] / "manifest.csv")
    assert preds["id"].tolist() == manifest["patient_id"].tolist()
    assert all((tmp_path / "p" / m).is_file() for m in preds["mask"])
    assert all((tmp_path / "p" / s).is_file() for s in preds["dicom_seg"])


def test_validate_dice_matches_the_training_loader(seg, tmp_path, monkeypatch, capsys):
    """validate's Dice equals the Dice of the same model on the studies as the training
    loader (site_folders.load_row) preprocesses them."""
    from medfed.datasets.imaging.manifest import manifest_rows, read_manifest
    from medfed.datasets.imaging.site_folders import load_row
    from medfed.federation.train import predict
    from medfed.inference.bundle import load_bundle

    model, sites = seg
    code, out, err = run_cli(["validate", str(model), str(sites[1]), "--out",
                              str(tmp_path / "v")], monkeypatch, capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "v" / "validation.json").read_text())
    bundle = load_bundle(model, device="cpu")
    params = {"task": "segmentation", "spatial_size": [16, 16, 8], "window": "soft_tissue",
              "spacing": None, "series_uid": None, "volume_index": None, "as_slices": False,
              "slice_axis": 2}
    pairs = [load_row(r, params, "test") for r in manifest_rows(sites[1],
                                                                read_manifest(sites[1]))]
    x = np.concatenate([p[0] for p in pairs])
    y = np.concatenate([p[1] for p in pairs])
    expected = bundle.task.metrics(y, predict(bundle.model, x, bundle.task))["dice"]
    assert result["metrics"]["dice"] == pytest.approx(expected, abs=1e-6)
    assert set(result["comparison"]["training_sites"]) == {"site-1", "site-2"}
    assert "dice" in out


def test_explain_gradcam_png_per_study(seg, tmp_path, monkeypatch, capsys):
    model, sites = seg
    code, _, err = run_cli(["explain", str(model), str(sites[1]), "--out", str(tmp_path / "e")],
                           monkeypatch, capsys)
    assert code == 0, err
    rows = pd.read_csv(tmp_path / "e" / "explanations.csv")
    assert len(rows) == len(pd.read_csv(sites[1] / "manifest.csv"))
    for png in rows["png"]:
        assert (tmp_path / "e" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_saliency_peaks_where_the_class_evidence_is():
    """A net that scores the top-left quadrant of its features, on an image with a bright
    blob in the top-left and the bottom-right: occlusion lights up the top-left blob only
    (Grad-CAM, a global weighting of feature maps, lights up both blobs)."""
    import torch
    from torch import nn

    from medfed.inference.explain import saliency

    class Quadrant(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
            nn.init.constant_(self.conv.weight, 1 / 9)

        def forward(self, x):
            top = torch.relu(self.conv(x))[:, :, :8, :8].mean(dim=(1, 2, 3))
            return torch.stack([-top, top], dim=1)

    class Stub:
        model = Quadrant().eval()

    x = np.zeros((1, 1, 16, 16), np.float32)
    x[0, 0, 2:6, 2:6] = x[0, 0, 10:14, 10:14] = 1.0
    occlusion = saliency(Stub, x, 1, "occlusion")
    assert occlusion.shape == (16, 16)
    assert occlusion[2:6, 2:6].mean() > occlusion[10:14, 10:14].mean() + 0.3
    cam = saliency(Stub, x, 1, "gradcam")
    assert cam.shape == (16, 16) and cam.max() == pytest.approx(1.0)
    assert cam[2:6, 2:6].mean() > cam[0:2, 8:16].mean() + 0.3  # blob > background


def test_a_study_of_another_modality_is_refused(seg, tmp_path, monkeypatch, capsys):
    import pydicom

    model, sites = seg
    series = tmp_path / "mr-series"
    shutil.copytree(sites[0] / "images" / "MRN-01-0002" / "series", series)
    for path in series.iterdir():
        ds = pydicom.dcmread(path)
        ds.Modality = "MR"
        ds.save_as(path)
    code, _, err = run_cli(["predict", str(model), str(series), "--out", str(tmp_path / "p")],
                           monkeypatch, capsys)
    assert code == 2
    assert "a MR series but the model was trained on CT" in err and "give a CT series" in err
    assert not (tmp_path / "p").exists()


def test_a_2d_image_for_a_3d_model_is_refused(seg, tmp_path, monkeypatch, capsys):
    model, sites = seg
    one_slice = sorted((sites[0] / "images" / "MRN-01-0002" / "series").iterdir())[0]
    code, _, err = run_cli(["predict", str(model), str(one_slice), "--out",
                            str(tmp_path / "p")], monkeypatch, capsys)
    assert code == 2 and "a 2D image" in err and "takes 3D volumes" in err


def test_an_imaging_model_refuses_a_table(seg, tmp_path, monkeypatch, capsys):
    model, _ = seg
    (tmp_path / "rows.csv").write_text("id,x1\n1,0.5\n")
    code, _, err = run_cli(["validate", str(model), str(tmp_path / "rows.csv"), "--out",
                            str(tmp_path / "v")], monkeypatch, capsys)
    assert code == 2 and "holds a table (CSV) but the model (segmentation" in err


def test_a_tampered_imaging_model_is_refused(seg, tmp_path, monkeypatch, capsys):
    model, sites = seg
    bad = tamper(model, tmp_path / "bad")
    card = json.loads((bad / "model_card.json").read_text())
    card["preprocessing"]["imaging"]["window"] = "lung"  # a changed contract, weights intact
    shutil.copyfile(model / "model.safetensors", bad / "model.safetensors")
    (bad / "model_card.json").write_text(json.dumps(card))
    for command in ("predict", "validate", "explain"):
        code, _, err = run_cli([command, str(bad), str(sites[1]), "--out",
                                str(tmp_path / command)], monkeypatch, capsys)
        assert code == 2 and "model card was altered" in err


# ---------------------------------------------------------------- two stages
def test_region_box_and_crop_keep_world_coordinates():
    from medfed.datasets.imaging.volume import Volume
    from medfed.inference.two_stage import crop_volume, region_box

    mask = np.zeros((20, 20, 10), np.uint8)
    mask[5:8, 10:12, 4] = 1
    box = region_box(mask, margin=2)
    assert box == (slice(3, 10), slice(8, 14), slice(2, 7))
    assert region_box(np.zeros_like(mask), 2) is None
    affine = np.diag([-0.7, -0.7, 2.5, 1.0])
    affine[:3, 3] = [10.0, -4.0, -100.0]
    volume = Volume(np.arange(4000, dtype=np.float32).reshape(20, 20, 10), affine, "CT",
                    "dicom")
    crop = crop_volume(volume, box)
    assert crop.shape == (7, 6, 5) and crop.array[0, 0, 0] == volume.array[3, 8, 2]
    np.testing.assert_allclose(crop.affine @ [0, 0, 0, 1], affine @ [3, 8, 2, 1])


def test_two_stage_segment_crop_classify(seg, tmp_path, monkeypatch, capsys):
    """Crops from the first stage train a DP-SGD (GroupNorm) classifier; predict --then
    scores each study's region; Grad-CAM++ and occlusion explain the DP-trained net."""
    from medfed.datasets.imaging.demo import write_demo_sites

    seg_model, _ = seg
    sites = write_demo_sites(tmp_path / "cls", sites=2, task="classification", fmt="dicom",
                             dims=3, patients=8, size=16, seed=3)
    crops = []
    for site in sites:
        out = tmp_path / "crops" / site.name
        code, _, err = run_cli(["crops", str(seg_model), str(site), "--out", str(out)],
                               monkeypatch, capsys)
        assert code == 0, err
        manifest = pd.read_csv(out / "manifest.csv")
        source = pd.read_csv(site / "manifest.csv")
        assert manifest["label"].tolist() == source["label"].tolist()
        crops.append(out)
    config = write_yaml(tmp_path / "cls.yaml", {
        "name": "crop-classifier",
        "dataset": {"name": "site-folders", "options": {
            "roots": [str(c) for c in crops], "task": "classification",
            "spatial_size": [16, 16, 8], "window": "soft_tissue",
            "cache_dir": str(tmp_path / "cache")}},
        "partition": {"scheme": "natural", "sites": 2, "min_site_size": 2},
        "model": {"name": "small_cnn", "channels": [4, 8]},
        "strategy": {"name": "fedavg", "min_sites": 2},
        "train": {"local_epochs": 1, "batch_size": 4}, "rounds": 1,
        "privacy": {"mode": "dp-sgd", "epsilon": 50},
        "baselines": {"local_only": False, "centralized": False}})
    cls_model = simulate(config, tmp_path / "cls-run")
    card = json.loads((cls_model / "model_card.json").read_text())
    assert all(v["mode"] == "dp-sgd" and v["epsilon"] <= 50
               for v in card["privacy_per_site"].values())
    new = sites[1] / "images" / "MRN-02-0003" / "series"
    code, _, err = run_cli(["predict", str(seg_model), str(new), "--then", str(cls_model),
                            "--out", str(tmp_path / "p")], monkeypatch, capsys)
    assert code == 0, err
    row = pd.read_csv(tmp_path / "p" / "predictions.csv").iloc[0]
    assert {"mask", "dicom_seg", "region", "score_0", "score_1", "predicted"} <= set(row.index)
    assert row["score_0"] + row["score_1"] == pytest.approx(1.0, abs=1e-5)
    for method in ("gradcampp", "occlusion"):
        code, _, err = run_cli(["explain", str(cls_model), str(new), "--out",
                                str(tmp_path / method), "--method", method],
                               monkeypatch, capsys)
        assert code == 0, err
        assert (tmp_path / method / "series.png").is_file()
    code, _, err = run_cli(["predict", str(cls_model), str(new), "--then", str(seg_model),
                            "--out", str(tmp_path / "wrong")], monkeypatch, capsys)
    assert code == 2 and "the first model must segment" in err
