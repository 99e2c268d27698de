"""The fusion model: modality mask, modality dropout, what a site sends, DP-compatibility."""

from __future__ import annotations

import numpy as np
import torch

from medfed.models import build_model, site_state_dict
from medfed.models.multimodal import drop_modalities

SHAPE = (1, 8, 8)
N_CLIN = 3
P = 64 + N_CLIN + 2


def _model(**options):
    torch.manual_seed(0)
    return build_model("multimodal", (P,), 1, image_shape=list(SHAPE),
                       encoder_options={"channels": [4, 8]}, **options).eval()


def _rows(n: int, has_image: float, has_clinical: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, P, generator=g)
    x[:, -2], x[:, -1] = has_image, has_clinical
    return x


def test_missing_image_ignores_the_image_block():
    model = _model()
    x = _rows(5, 0.0, 1.0)
    other = x.clone()
    other[:, :64] = torch.randn(5, 64) * 10  # a different "image" behind a 0 mask
    with torch.no_grad():
        assert torch.allclose(model(x), model(other))
        seen = x.clone()
        seen[:, -2] = 1.0  # the same rows with the image present: the image now counts
        assert not torch.allclose(model(seen), model(other * torch.tensor(1.0)))


def test_missing_clinical_ignores_the_clinical_block():
    model = _model()
    x = _rows(5, 1.0, 0.0)
    other = x.clone()
    other[:, 64:64 + N_CLIN] = 7.0
    with torch.no_grad():
        assert torch.allclose(model(x), model(other))


def test_modality_dropout_never_hides_both_and_keeps_missing_missing():
    torch.manual_seed(1)
    has_image = torch.tensor([1.0, 1.0, 0.0, 1.0] * 500)
    has_clinical = torch.tensor([1.0, 0.0, 1.0, 1.0] * 500)
    img, clin = drop_modalities(has_image, has_clinical, 0.3)
    assert torch.all(img + clin >= 1)  # every patient keeps one modality
    assert torch.all(img <= has_image) and torch.all(clin <= has_clinical)
    both = (has_image * has_clinical).bool()
    dropped = both & ((img == 0) | (clin == 0))
    assert 0.5 < dropped.float().sum() / both.sum() < 0.7  # about 2 x 0.3


def test_clinical_only_site_sends_no_image_branch():
    model = _model()
    clinical_only = _rows(6, 0.0, 1.0).numpy()
    mixed = _rows(6, 1.0, 1.0).numpy()
    sent = site_state_dict(model, clinical_only)
    assert sent and not any(k.startswith("image.") for k in sent)
    assert any(k.startswith("clinical.") for k in sent) and any(k.startswith("head.") for k in
                                                                 sent)
    assert set(site_state_dict(model, mixed)) == set(model.state_dict())


def test_single_modality_variants_build_only_their_branch():
    image_only = _model(modalities=["image"])
    clinical_only = _model(modalities=["clinical"])
    assert not hasattr(image_only, "clinical") and not hasattr(clinical_only, "image")
    x = _rows(4, 1.0, 1.0)
    with torch.no_grad():
        assert image_only(x).shape == clinical_only(x).shape == (4, 1)


def test_fusion_model_is_dp_compatible_and_trains_under_opacus():
    from opacus.validators import ModuleValidator

    from medfed.config import validate
    from medfed.models.runtime import pick_device
    from medfed.privacy.dp import train_dp
    from medfed.tasks import get_task

    model = _model().train()
    assert ModuleValidator.validate(model, strict=False) == []
    x = _rows(32, 1.0, 1.0).numpy()
    x[::3, -2] = 0.0
    y = np.arange(32) % 2
    cfg = validate({"dataset": {"name": "breast-cancer"}, "model": {"name": "multimodal"},
                    "train": {"batch_size": 8, "lr": 0.01}})
    before = [p.detach().clone() for p in model.parameters()]
    result = train_dp(model, x, y, get_task("binary"), cfg.train, epochs=1, noise_multiplier=1.0,
                      max_grad_norm=1.0, seed=0, device=pick_device("cpu"))
    assert result.steps > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
