"""``fedavg-partial``: each array averaged over the sites that sent it, weighted by examples."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from medfed.config import StrategyConfig
from medfed.models import build_model, site_state_dict
from medfed.strategies import STRATEGIES, build_strategy
from medfed.strategies.partial import FedAvgPartial, partial_average


def _rec(**arrays) -> ArrayRecord:
    return ArrayRecord({k: torch.tensor(v, dtype=torch.float32) for k, v in arrays.items()})


def test_partial_average_rule():
    current = _rec(a=[0.0, 0.0], b=[5.0], c=[9.0])
    updates = [(_rec(a=[1.0, 2.0], b=[1.0]), 10.0),   # an imaging site: a and b
               (_rec(b=[4.0]), 30.0)]                 # a clinical-only site: b only
    out = partial_average(current, updates).to_torch_state_dict()
    assert list(out) == ["a", "b", "c"]
    assert torch.allclose(out["a"], torch.tensor([1.0, 2.0]))  # only the site that sent it
    assert torch.allclose(out["b"], torch.tensor([(10 * 1 + 30 * 4) / 40]))  # weighted
    assert torch.allclose(out["c"], torch.tensor([9.0]))  # nobody sent it: unchanged


def test_integer_buffers_keep_their_dtype():
    current = ArrayRecord({"n": torch.tensor(3, dtype=torch.int64)})
    updates = [(ArrayRecord({"n": torch.tensor(4, dtype=torch.int64)}), 1.0),
               (ArrayRecord({"n": torch.tensor(6, dtype=torch.int64)}), 1.0)]
    out = partial_average(current, updates).to_torch_state_dict()["n"]
    assert out.dtype == torch.int64 and int(out) == 5


def _reply(arrays: ArrayRecord, n: int) -> Message:
    from flwr.supercore.task_identity import TaskIdentity

    # a server-side identity, as the in-process engine sets it
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0
    query = Message(RecordDict({"config": ConfigRecord()}), dst_node_id=7, message_type="train")
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(
        {"num-examples": n, "train_loss": 0.5})}), reply_to=query)


def test_clinical_only_site_leaves_the_image_branch_untouched():
    torch.manual_seed(0)
    shape, n_clinical = (1, 8, 8), 3
    p = 64 + n_clinical + 2
    model = build_model("multimodal", (p,), 1, image_shape=list(shape),
                        encoder_options={"channels": [4, 8]})
    global_arrays = ArrayRecord(model.state_dict())
    imaging = {k: v + 1.0 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    clinical = {k: v - 3.0 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    x_clinical = np.zeros((5, p), np.float32)
    x_clinical[:, -1] = 1.0  # every patient has clinical data, none an image
    model.load_state_dict(clinical)
    sent_clinical = site_state_dict(model, x_clinical)
    strategy = build_strategy(StrategyConfig(name="fedavg-partial", min_sites=2), 2)
    assert isinstance(strategy, FedAvgPartial) and STRATEGIES["fedavg-partial"] is FedAvgPartial
    strategy._current = global_arrays  # what configure_train remembers
    arrays, metrics = strategy.aggregate_train(1, [_reply(ArrayRecord(imaging), 30),
                                                   _reply(ArrayRecord(sent_clinical), 10)])
    out = arrays.to_torch_state_dict()
    assert set(out) == set(global_arrays.to_torch_state_dict())
    image_key = next(k for k in out if k.startswith("image.") and "weight" in k)
    head_key = next(k for k in out if k.startswith("head.") and "weight" in k)
    assert torch.allclose(out[image_key], imaging[image_key])  # the imaging site alone
    assert torch.allclose(out[head_key], (30 * imaging[head_key] + 10 * clinical[head_key]) / 40,
                          atol=1e-6)
    assert abs(float(metrics["train_loss"]) - 0.5) < 1e-9
