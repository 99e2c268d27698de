"""Cox partial likelihood (Breslow ties) and Harrell's C-index against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medfed.tasks.survival import SurvivalTask, cox_loss, harrell_c_index


def test_cox_loss_breslow_ties_by_hand():
    # times 1, 2, 2, 3 with events 1, 1, 1, 0; log-risks 0.5, 0, 1, -1
    eta = torch.tensor([0.5, 0.0, 1.0, -1.0], dtype=torch.float64)
    time = torch.tensor([1.0, 2.0, 2.0, 3.0], dtype=torch.float64)
    event = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    e = math.exp
    all_at_risk = e(0.5) + e(0) + e(1) + e(-1)
    tied_risk_set = e(0) + e(1) + e(-1)  # Breslow: both tied events share the set at t = 2
    log_lik = (0.5 - math.log(all_at_risk)) + (0 - math.log(tied_risk_set)) + (
        1 - math.log(tied_risk_set))
    assert float(cox_loss(eta, time, event)) == pytest.approx(-log_lik / 3, rel=1e-12)


def test_cox_loss_no_event_is_zero_with_gradient():
    eta = torch.tensor([0.3, -0.2], requires_grad=True)
    loss = cox_loss(eta, torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
    loss.backward()
    assert float(loss.detach()) == 0.0 and eta.grad is not None


def test_cox_loss_gradient_pushes_early_event_up():
    eta = torch.zeros(3, requires_grad=True)
    cox_loss(eta, torch.tensor([1.0, 5.0, 9.0]), torch.tensor([1.0, 0.0, 0.0])).backward()
    assert eta.grad[0] < 0 < eta.grad[1]  # descent raises the risk of the early event


def test_c_index_hand_computed():
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.array([1, 0, 1, 1])
    risk = np.array([0.9, 0.5, 0.6, 0.1])
    # comparable (event first): (0,1) (0,2) (0,3) (2,3); all ordered correctly -> 4/4
    assert harrell_c_index(time, event, risk) == 1.0
    risk = np.array([0.9, 0.5, 0.1, 0.6])  # (2,3) now discordant -> 3/4
    assert harrell_c_index(time, event, risk) == pytest.approx(0.75)
    risk = np.array([0.9, 0.9, 0.1, 0.6])  # (0,1) tied risk -> 0.5: (0.5 + 1 + 1 + 0) / 4
    assert harrell_c_index(time, event, risk) == pytest.approx(2.5 / 4)


def test_c_index_tied_times_and_no_pairs():
    # equal times: event vs censored is comparable; event vs event is not
    assert harrell_c_index(np.array([2.0, 2.0]), np.array([1, 0]), np.array([1.0, 0.0])) == 1.0
    assert math.isnan(harrell_c_index(np.array([2.0, 2.0]), np.array([1, 1]),
                                      np.array([1.0, 0.0])))
    assert math.isnan(harrell_c_index(np.array([1.0, 2.0]), np.array([0, 0]),
                                      np.array([1.0, 0.0])))


def test_task_hooks_on_time_event_labels():
    task = SurvivalTask()
    y = np.array([[5.0, 1], [10.0, 0], [3.0, 1], [8.0, 0]])
    assert task.label_summary(y) == {"patients": 4, "events": 2, "median_time": 6.5}
    assert list(task.partition_labels(y)) == [1, 0, 1, 0]
    assert task.check_train_labels(y) is None
    assert "no event" in task.check_train_labels(np.array([[1.0, 0], [2.0, 0]]))
    loss = task.loss(torch.zeros(4, 1), torch.as_tensor(y))
    assert torch.isfinite(loss)
