"""Late-fusion multimodal model: an image encoder and a clinical MLP fused into one head.

Inputs are flat rows (N, P) packed by the ``multimodal-sites`` dataset:
``[image pixels (C*H*W) | clinical features (F) | has_image | has_clinical]``. A missing
modality is zeros in its block and 0 in its mask column; the model multiplies each branch's
embedding by its mask, so a missing image or clinical row contributes nothing, in training
and at inference. Modality dropout (training only) hides one of two present modalities at
random so the head never depends on one branch alone. GroupNorm, no in-place ops: DP-ready.

A site trains (and sends) only the branches its data can update: ``FusionNet.site_state_dict``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from medfed.errors import MedFedError

MODALITIES = ("image", "clinical")
N_MASKS = 2  # has_image, has_clinical: the last two columns of every row


def split_layout(n_inputs: int, image_shape: Sequence[int]) -> tuple[int, int]:
    """(image pixels, clinical features) of a packed row of ``n_inputs`` values."""
    n_pixels = int(np.prod([int(s) for s in image_shape]))
    n_clinical = n_inputs - n_pixels - N_MASKS
    if n_clinical < 1:
        raise MedFedError(f"model.image_shape: {list(image_shape)} ({n_pixels} pixels) does "
                          f"not fit packed rows of {n_inputs} values; set it to [channels, "
                          "*dataset.options.spatial_size] (e.g. [1, 32, 32])")
    return n_pixels, n_clinical


def modality_masks(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(has_image, has_clinical), each (N,) float, from packed rows (N, P)."""
    return x[:, -2], x[:, -1]


def drop_modalities(has_image: torch.Tensor, has_clinical: torch.Tensor, p: float,
                    generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Hide the image (prob p) or the clinical row (prob p) of patients with both; never both.

    ``generator``: where the (N,) uniform draws come from, on the masks' device (None: a
    fresh one seeded 0; never torch's global generator).
    """
    if generator is None:
        generator = torch.Generator(device=has_image.device).manual_seed(0)
    both = has_image * has_clinical
    u = torch.rand(has_image.shape, generator=generator, device=has_image.device)
    drop_image = both * (u < p).float()
    drop_clinical = both * ((u >= p) & (u < 2 * p)).float()
    return has_image * (1 - drop_image), has_clinical * (1 - drop_clinical)


class FusionNet(nn.Module):
    """Image encoder (any registered imaging model) + clinical MLP -> fused head.

    ``modalities``: the branches built; ("image",) or ("clinical",) give the single-modality
    models of the report, trained on the very same packed data.
    """

    def __init__(self, n_inputs: int, image_shape: Sequence[int], n_outputs: int,
                 modalities: Sequence[str] = MODALITIES, image_encoder: str = "small_cnn",
                 encoder_options: dict | None = None, embed: int = 16,
                 clinical_hidden: Sequence[int] = (32,), fusion_hidden: int = 32,
                 dropout: float = 0.1, modality_dropout: float = 0.2) -> None:
        super().__init__()
        from medfed.models import build_model

        unknown = sorted(set(modalities) - set(MODALITIES))
        if unknown or not modalities:
            raise MedFedError(f"model.modalities: {list(modalities)}; choose from "
                              f"{list(MODALITIES)}")
        self.image_shape = tuple(int(s) for s in image_shape)
        self.n_pixels, self.n_clinical = split_layout(n_inputs, self.image_shape)
        self.modalities = tuple(m for m in MODALITIES if m in modalities)
        self.modality_dropout = float(modality_dropout)
        self.generator: torch.Generator | None = None  # set by local training (use_generator)
        if "image" in self.modalities:  # dp=True: GroupNorm, no in-place ops (Opacus-ready)
            self.image = build_model(image_encoder, self.image_shape, embed, dp=True,
                                     **(encoder_options or {}))
        if "clinical" in self.modalities:
            layers: list[nn.Module] = []
            width = self.n_clinical
            for size in clinical_hidden:
                layers += [nn.Linear(width, int(size)), nn.ReLU()]
                width = int(size)
            self.clinical = nn.Sequential(*layers, nn.Linear(width, embed))
        k = len(self.modalities)
        self.head = nn.Sequential(nn.Linear(k * embed + k, fusion_hidden), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(fusion_hidden, n_outputs))

    def site_state_dict(self, x_train: np.ndarray) -> dict[str, torch.Tensor]:
        """The arrays a site sends: everything, except branches its data cannot train.

        A clinical-only site leaves out ``image.*`` (its gradients there are always zero), so
        the ``fedavg-partial`` strategy averages the image branch over imaging sites only.
        """
        missing = set(self.modalities) - site_modalities(x_train)
        return {k: v for k, v in self.state_dict().items()
                if k.split(".", 1)[0] not in missing}

    def use_generator(self, generator: torch.Generator) -> None:
        """Modality dropout draws from ``generator`` (local training: its site's and round's)."""
        self.generator = generator

    def _generator(self, device: torch.device) -> torch.Generator:
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device=device).manual_seed(0)  # never the global
        return self.generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, P) packed rows -> (N, n_outputs) logits."""
        has_image, has_clinical = modality_masks(x)
        if self.training and self.modality_dropout > 0 and len(self.modalities) == 2:
            has_image, has_clinical = drop_modalities(has_image, has_clinical,
                                                      self.modality_dropout,
                                                      self._generator(x.device))
        parts, masks = [], []
        if "image" in self.modalities:
            images = x[:, :self.n_pixels].reshape(len(x), *self.image_shape)
            parts.append(torch.relu(self.image(images)) * has_image[:, None])
            masks.append(has_image[:, None])
        if "clinical" in self.modalities:
            clinical = x[:, self.n_pixels:self.n_pixels + self.n_clinical]
            parts.append(torch.relu(self.clinical(clinical)) * has_clinical[:, None])
            masks.append(has_clinical[:, None])
        return self.head(torch.cat(parts + masks, dim=1))


def multimodal(input_shape: Sequence[int], n_outputs: int, image_shape: Sequence[int] = (1, 32, 32),
               modalities: Sequence[str] = MODALITIES, image_encoder: str = "small_cnn",
               encoder_options: dict | None = None, embed: int = 16,
               clinical_hidden: Sequence[int] = (32,), fusion_hidden: int = 32,
               dropout: float = 0.1, modality_dropout: float = 0.2) -> nn.Module:
    """Late-fusion image + clinical model over packed rows ``input_shape = (P,)``.

    ``image_shape``: (C, *spatial) of the image block; ``image_encoder``: any registered
    imaging model (small_cnn, resnet18, densenet121) with ``encoder_options``.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 1:
        raise MedFedError(f"model: multimodal takes packed rows from the multimodal-sites "
                          f"dataset, got inputs of shape {shape}")
    return FusionNet(shape[0], image_shape, n_outputs, modalities, image_encoder,
                     encoder_options, embed, clinical_hidden, fusion_hidden, dropout,
                     modality_dropout)


def site_modalities(x: np.ndarray) -> set[str]:
    """The modalities present in at least one of a site's packed rows (N, P)."""
    present = set()
    if len(x) and float(np.max(x[:, -2])) > 0:
        present.add("image")
    if len(x) and float(np.max(x[:, -1])) > 0:
        present.add("clinical")
    return present
