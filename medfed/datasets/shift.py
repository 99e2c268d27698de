"""``partition.shift``: a scanner-like acquisition effect per virtual site (feature shift).

Each site draws its effect once, from a seed derived from the partition seed and its name:
intensity gamma, linear contrast, Gaussian blur (resolution), noise level and a smooth
multiplicative bias field. MONAI's random transforms apply it with that fixed draw (the
noise is drawn per image, from the site's own stream), to the site's training and test
images alike, so the sites differ systematically and a rerun gives the same images.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from medfed.config import ShiftConfig
from medfed.datasets.base import Site
from medfed.errors import MedFedError
from medfed.seeds import derive_seed, numpy_rng


@dataclass(frozen=True)
class SiteEffect:
    """One site's acquisition effect (see ShiftConfig for the ranges it is drawn from)."""

    gamma: float
    contrast: float
    blur: float
    noise: float
    bias_field: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in dataclasses.asdict(self).items()}


def site_effect(shift: ShiftConfig, seed: int, site: str) -> SiteEffect:
    """The fixed draw of ``site`` (gamma log-uniform, the rest uniform in their ranges)."""
    rng = numpy_rng(seed, "shift", site)
    low, high = np.log(shift.gamma[0]), np.log(shift.gamma[1])
    return SiteEffect(gamma=float(np.exp(rng.uniform(min(low, high), max(low, high)))),
                      contrast=float(rng.uniform(*sorted(shift.contrast))),
                      blur=float(rng.uniform(*sorted(shift.blur))),
                      noise=float(rng.uniform(*sorted(shift.noise))),
                      bias_field=float(rng.uniform(*sorted(shift.bias_field))))


def apply_effect(x: np.ndarray, effect: SiteEffect, seed: int, split: str = "train"
                 ) -> np.ndarray:
    """``x``: (N, C, *spatial) float32 in [0, 1] -> the same shape with the site's effect.

    The images go through MONAI as one stack (N x C as channels): one bias field (from
    ``seed``, the site's: train and test share it) and one gamma curve over the intensity
    range for all of them; noise per image, from the ``split``'s own stream.
    """
    from monai.transforms import (
        RandAdjustContrast,
        RandBiasField,
        RandGaussianNoise,
        RandGaussianSmooth,
    )

    if len(x) == 0:
        return np.asarray(x, np.float32)
    stack = np.asarray(x, np.float32).reshape(-1, *x.shape[2:])  # (N*C, *spatial)
    if effect.bias_field > 0:
        field = RandBiasField(degree=3, coeff_range=(-effect.bias_field, effect.bias_field),
                              prob=1.0)
        field.set_random_state(derive_seed(seed, "bias-field"))
        stack = np.asarray(field(stack), np.float32)
    gamma = RandAdjustContrast(prob=1.0, gamma=(effect.gamma, effect.gamma))
    stack = np.asarray(gamma(np.clip(stack, 0, None)), np.float32)
    mean = stack.mean(axis=tuple(range(1, stack.ndim)), keepdims=True)
    stack = mean + effect.contrast * (stack - mean)
    if effect.blur > 1e-3:
        sigma = (effect.blur, effect.blur)
        stack = np.asarray(RandGaussianSmooth(sigma, sigma, sigma, prob=1.0)(stack), np.float32)
    if effect.noise > 0:
        noise = RandGaussianNoise(prob=1.0, std=effect.noise, sample_std=False)
        noise.set_random_state(derive_seed(seed, "noise", split))
        stack = np.asarray(noise(stack), np.float32)
    return np.clip(stack, 0.0, 1.0).reshape(x.shape).astype(np.float32)


def shift_sites(sites: list[Site], shift: ShiftConfig | None, seed: int) -> list[Site]:
    """Each site's images with its own effect (``shift`` None: the sites unchanged)."""
    if shift is None:
        return sites
    if sites and sites[0].x_train.ndim not in (4, 5):
        raise MedFedError("partition.shift applies to images; this dataset is a table",
                          where="partition.shift", fix="remove partition.shift")
    seed = seed if shift.seed is None else shift.seed
    out = []
    for site in sites:
        effect = site_effect(shift, seed, site.name)
        stream = derive_seed(seed, "shift", site.name)
        out.append(dataclasses.replace(
            site, x_train=apply_effect(site.x_train, effect, stream, "train"),
            x_test=apply_effect(site.x_test, effect, stream, "test")))
    return out


def effects(sites: list[Site], shift: ShiftConfig | None, seed: int) -> dict[str, dict]:
    """{site: its drawn effect} for the report ({} without shift)."""
    if shift is None:
        return {}
    seed = seed if shift.seed is None else shift.seed
    return {s.name: site_effect(shift, seed, s.name).as_dict() for s in sites}
