"""The alarm policy per stay (dwell, cooldown, early warning) and the timeseries task."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medfed.tasks.timeseries import TimeSeriesTask, alarm_summary, alarm_table, stay_alarms


def test_dwell_and_cooldown_hand_built_stay():
    scores = np.array([0.9, 0.2, 0.8, 0.8, 0.8, 0.8, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9])
    fired, in_alarm = stay_alarms(scores, 0.5, dwell=1, cooldown=0)
    assert fired.tolist() == [0, 2, 3, 4, 5, 7, 8, 9, 10, 11]
    fired, in_alarm = stay_alarms(scores, 0.5, dwell=2, cooldown=0)
    assert fired.tolist() == [3, 4, 5, 8, 9, 10, 11]  # hour 0 alone never fires
    assert in_alarm.tolist() == [False, False, False, True, True, True, False, False, True,
                                 True, True, True]
    fired, _ = stay_alarms(scores, 0.5, dwell=2, cooldown=4)
    assert fired.tolist() == [3, 8]  # 4, 5, 7 silent after 3; next allowed from hour 8
    fired, _ = stay_alarms(scores, 0.5, dwell=3, cooldown=2)
    assert fired.tolist() == [4, 9]
    fired, _ = stay_alarms(scores, 0.95, dwell=1, cooldown=0)
    assert fired.tolist() == []


def _y(stay, labels, weight=1.0):
    n = len(labels)
    return np.column_stack([labels, np.full(n, stay), np.arange(n), np.full(n, weight)])


def test_alarm_summary_per_stay_not_per_row():
    # septic stay 0: labels from hour 10 -> onset 16; quiet stay 1
    septic = _y(0, [0] * 10 + [1] * 8)
    quiet = _y(1, [0] * 12)
    s_septic = np.zeros(18)
    s_septic[[2, 3]] = 0.9  # alarm at hour 3 (dwell 2): 13 h before onset -> a false alarm
    s_septic[[8, 9]] = 0.9  # alarm at hour 9: 7 h before onset -> true and an early warning
    s_quiet = np.zeros(12)
    s_quiet[[5, 6, 7]] = 0.9  # alarm at 6 (dwell 2); hour 7 silent (cooldown)
    rows = np.concatenate([quiet, septic])[::-1]  # row order must not matter
    scores = np.concatenate([s_quiet, s_septic])[::-1]
    out = alarm_summary(rows, scores, 0.5, dwell=2, cooldown=4, horizon=12, lead=6)
    assert out["alarms_per_100h"] == pytest.approx(100 * 3 / 30)
    assert out["hours_in_alarm"] == pytest.approx(4 / 30)  # hours 3, 9 and 6, 7
    assert out["alarm_ppv"] == pytest.approx(1 / 3)
    assert out["septic_warned"] == 1.0
    table = alarm_table(rows, scores, {"thresholds": [0.5, 0.95], "dwell": 2, "cooldown": 4})
    assert [r["threshold"] for r in table["rows"]] == [0.5, 0.95]
    assert table["rows"][1]["alarm_ppv"] is None  # no alarm: undefined, JSON-safe
    assert table["stays"] == 2 and table["pr_curve"]["recall"]


def test_task_loss_weights_positive_hours():
    task = TimeSeriesTask()
    logits = torch.zeros(4, 1)
    y = torch.as_tensor(np.column_stack([[1, 0, 0, 0], [0, 0, 1, 1], [0, 1, 0, 1],
                                         [9, 9, 9, 9]]), dtype=torch.float64)
    weighted = task.loss(logits, y)
    y[:, 3] = 1.0
    assert float(weighted) == pytest.approx(float(task.loss(logits, y)) * 12 / 4)
    metrics = task.metrics(y.numpy(), np.array([0.9, 0.1, 0.2, 0.1]))
    assert metrics["auroc"] == 1.0 and not math.isnan(metrics["alarms_per_100h"])


def test_gru_reads_hour_sequences():
    from medfed.models import build_model

    model = build_model("gru", (6, 10), 1, hidden=8)
    assert model(torch.zeros(5, 6, 10)).shape == (5, 1)
