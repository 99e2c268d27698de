"""Segmentation loss and Dice on hand-made masks; multiclass confusion matrix and per-class
metrics; image batching, augmentation and sliding-window prediction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medfed.config import TrainConfig
from medfed.federation.batches import ArrayBatches, augmentation
from medfed.federation.train import predict, train_local
from medfed.models import build_model
from medfed.tasks import get_task
from medfed.tasks.classification import class_details
from medfed.tasks.segmentation import dice_metrics, dice_per_image


def test_dice_on_a_hand_made_case():
    truth = np.zeros((2, 1, 4, 4), np.int64)
    pred = np.zeros_like(truth)
    truth[0, 0, :2, :2] = 1  # 4 voxels
    pred[0, 0, :2, :3] = 1  # 6 voxels, 4 of them right: Dice = 8 / 10
    truth[1, 0, 0, 0] = 2  # image 2: label 2 found exactly, label 1 absent in both
    pred[1, 0, 0, 0] = 2
    assert dice_per_image(truth, pred, 1)[0] == pytest.approx(0.8)
    assert math.isnan(dice_per_image(truth, pred, 1)[1])
    metrics = dice_metrics(truth, pred)
    assert metrics["dice_1"] == pytest.approx(0.8)
    assert metrics["dice_2"] == pytest.approx(1.0)
    assert metrics["dice"] == pytest.approx(0.9)
    missed = np.zeros_like(pred)
    assert dice_metrics(truth, missed)["dice_1"] == 0.0


def test_segmentation_loss_is_low_for_a_right_answer_and_high_for_a_wrong_one():
    task = get_task("segmentation")
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    mask[..., 2:5, 2:5] = 1
    one_hot = torch.cat([(mask == 0), (mask == 1)], dim=1).float()
    good, bad = task.loss(one_hot * 20 - 10, mask), task.loss(10 - one_hot * 20, mask)
    assert float(good) < 0.05 < 1.0 < float(bad)
    scores = task.scores(one_hot * 20 - 10)
    assert scores.shape == (1, 1, 8, 8) and torch.equal(scores.long(), mask)


def test_segmentation_labels_summary_split_and_checks():
    task = get_task("segmentation")
    y = np.zeros((4, 1, 3, 3), np.int64)
    y[0, 0, 1, 1] = y[1, 0, 0, 0] = 1
    assert task.label_summary(y) == {"images": 4, "with_1": 2}
    assert task.partition_labels(y).tolist() == [1, 1, 0, 0]
    assert task.stratify(y).tolist() == [1, 1, 0, 0]
    assert task.check_train_labels(y) is None
    assert "no foreground" in task.check_train_labels(np.zeros((2, 1, 3, 3), np.int64))


def test_multiclass_confusion_matrix_and_per_class_metrics():
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.eye(3)[[0, 1, 1, 1, 0, 2]]  # predicted 0, 1, 1, 1, 0, 2
    details = get_task("multiclass").details(y, proba)
    assert details["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    c0, c1, c2 = (details["per_class"][k] for k in "012")
    assert c0 == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert c1["precision"] == pytest.approx(2 / 3) and c1["recall"] == 1.0
    assert c1["f1"] == pytest.approx(0.8)
    assert c2 == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}


def test_class_details_with_an_absent_class():
    details = class_details(np.array([0, 0, 1]), np.eye(3)[[0, 1, 1]])
    assert details["per_class"]["2"] == {"precision": None, "recall": None, "f1": None,
                                         "support": 0}


def test_binary_task_has_no_details_and_is_unchanged():
    task = get_task("binary")
    assert task.details(np.array([0, 1]), np.array([0.2, 0.7])) is None
    assert task.metrics(np.array([0, 1, 1, 0]), np.array([0.1, 0.9, 0.8, 0.3]))["auroc"] == 1.0


def test_memmap_images_are_batched_without_loading_everything(tmp_path):
    x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32,
                                  shape=(10, 1, 4, 4, 4))
    x[:] = np.arange(10, dtype=np.float32)[:, None, None, None, None]
    x.flush()
    x = np.load(tmp_path / "x.npy", mmap_mode="r")
    batches = ArrayBatches(x, np.arange(10), torch.device("cpu"))
    assert not batches.resident
    xb, yb = batches.take(torch.tensor([7, 2, 5]))
    assert sorted(yb.tolist()) == [2, 5, 7]
    assert [float(v[0, 0, 0, 0]) for v in xb] == [float(v) for v in yb]


def test_augmentation_moves_image_and_mask_together():
    transform = augmentation(["flip", "rotate90"], 2, with_mask=True, roi_size=None, seed=3)
    x = torch.zeros(6, 1, 8, 8)
    x[:, :, 1, 2] = 1.0
    y = (x > 0).long()
    xb, yb = ArrayBatches(x.numpy(), y.numpy(), torch.device("cpu"), transform).take(
        torch.arange(6))
    assert torch.equal((xb > 0).long(), yb)
    assert not torch.equal(xb, x)  # at least one of six samples moved


def test_segmentation_trains_on_patches_and_predicts_by_sliding_window():
    rng = np.random.default_rng(0)
    y = np.zeros((6, 1, 8, 24, 24), np.int64)
    y[:, :, 2:6, 8:16, 8:16] = 1
    x = (y + rng.normal(0, 0.1, y.shape)).astype(np.float32)
    task = get_task("segmentation")
    torch.manual_seed(0)
    model = build_model("unet", (1, 8, 24, 24), 2, channels=[8, 16], strides=[2],
                        roi_size=[8, 16, 16])
    cfg = TrainConfig(batch_size=2, optimizer="adam", lr=0.01)
    stats = train_local(model, x, y, task, cfg, epochs=8, seed=0)
    assert stats["steps"] == 24
    pred = predict(model, x[:2], task)
    assert pred.shape == (2, 1, 8, 24, 24) and pred.dtype == np.uint8
    assert task.metrics(y[:2], pred)["dice"] > 0.8


def test_report_markdown_has_class_tables_and_dice_per_label():
    from medfed.reports.imaging import imaging_markdown

    y, proba = np.array([0, 1, 2, 2]), np.eye(3)[[0, 1, 1, 2]]
    details = get_task("multiclass").details(y, proba)
    arm = {"pooled": {"accuracy": 0.75}, "per_site": {"a": {"accuracy": 0.75}},
           "details": {"pooled": details, "per_site": {"a": details}}}
    text = "\n".join(imaging_markdown({"task": "multiclass", "sites": [{"name": "a"}],
                                       "metrics": {"federated": arm}}))
    assert "Confusion matrix" in text and "| 2 | 0 | 1 | 1 |" in text
    assert "| 1 | 0.500 | 1.000 | 0.667 | 1 |" in text
    seg = {"pooled": {"dice": 0.8, "dice_1": 0.8}, "per_site": {"a": {"dice": 0.7, "dice_1": 0.7}}}
    text = "\n".join(imaging_markdown({"task": "segmentation", "sites": [{"name": "a"}],
                                       "metrics": {"federated": seg, "local_only": seg}}))
    assert "federated label 1" in text and "| a | 0.700 | 0.700 |" in text
    assert imaging_markdown({"task": "binary", "sites": [], "metrics": {}}) == []
