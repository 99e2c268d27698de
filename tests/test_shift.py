"""``partition.shift``: each virtual site's own scanner-like effect, fixed and reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from medfed.config import ShiftConfig, validate
from medfed.datasets.base import Site
from medfed.datasets.shift import apply_effect, effects, shift_sites, site_effect
from medfed.errors import MedFedError


def image_sites(n_sites: int = 4, n: int = 40, seed: int = 0) -> list[Site]:
    """Sites of identically distributed 16x16 gray images (no shift of their own)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16]
    blob = np.exp(-((yy - 8) ** 2 + (xx - 8) ** 2) / 18.0)

    def images(k: int) -> np.ndarray:
        base = 0.25 + 0.5 * blob * rng.uniform(0.5, 1.0, (k, 1, 1))
        return np.clip(base + rng.normal(0, 0.02, (k, 16, 16)), 0, 1)[:, None].astype(np.float32)

    return [Site(f"site-{i + 1}", images(n), np.arange(n) % 2, images(n // 2),
                 np.arange(n // 2) % 2) for i in range(n_sites)]


def stats(x: np.ndarray) -> np.ndarray:
    """(mean intensity, contrast, sharpness) of a stack of images."""
    return np.array([x.mean(), x.std(), np.abs(np.diff(x, axis=-1)).mean()])


def test_sites_differ_systematically_and_train_matches_test():
    sites = shift_sites(image_sites(), ShiftConfig(), seed=7)
    train = np.array([stats(s.x_train) for s in sites])
    test = np.array([stats(s.x_test) for s in sites])
    spread_between = train.std(axis=0)
    # a site's train and test images share the effect: closer to each other than to others
    within = np.abs(train - test).mean(axis=0)
    assert (spread_between > 2 * within).all(), (spread_between, within)
    plain = np.array([stats(s.x_train) for s in image_sites()])
    assert (spread_between > 3 * plain.std(axis=0)).all()
    assert all(s.x_train.dtype == np.float32 and s.x_train.min() >= 0 and s.x_train.max() <= 1
               for s in sites)


def test_the_draw_is_fixed_by_seed_and_site_name():
    first = shift_sites(image_sites(), ShiftConfig(), seed=7)
    again = shift_sites(image_sites(), ShiftConfig(), seed=7)
    other = shift_sites(image_sites(), ShiftConfig(), seed=8)
    for a, b, c in zip(first, again, other, strict=True):
        assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.x_test, b.x_test)
        assert not np.allclose(a.x_train, c.x_train)
    assert site_effect(ShiftConfig(), 7, "site-2") == site_effect(ShiftConfig(), 7, "site-2")
    assert site_effect(ShiftConfig(), 7, "site-2") != site_effect(ShiftConfig(), 7, "site-3")
    drawn = effects(first, ShiftConfig(), 7)
    lo, hi = ShiftConfig().gamma
    assert all(lo <= e["gamma"] <= hi for e in drawn.values())
    # the labels and sizes are the partition's, untouched
    assert [s.n_train for s in first] == [s.n_train for s in image_sites()]


def test_each_effect_does_what_it_says():
    x = np.random.default_rng(0).uniform(0.3, 0.7, (20, 1, 16, 16)).astype(np.float32)
    none = dict(gamma=1.0, contrast=1.0, blur=0.0, noise=0.0, bias_field=0.0)
    from medfed.datasets.shift import SiteEffect

    assert np.allclose(apply_effect(x, SiteEffect(**none), 0), x, atol=1e-5)
    blurred = apply_effect(x, SiteEffect(**{**none, "blur": 1.5}), 0)
    assert stats(blurred)[2] < 0.7 * stats(x)[2]
    noisy = apply_effect(x, SiteEffect(**{**none, "noise": 0.1}), 0)
    assert (noisy - x).std() > 0.07
    darker = apply_effect(x, SiteEffect(**{**none, "gamma": 2.0}), 0)
    assert darker.mean() < x.mean()
    flat = apply_effect(x, SiteEffect(**{**none, "contrast": 0.5}), 0)
    assert flat.std() < 0.6 * x.std()


def test_config_flag_and_tables_refused():
    cfg = validate({"partition": {"shift": True}})
    assert cfg.partition.shift == ShiftConfig()
    assert validate({"partition": {"shift": False}}).partition.shift is None
    table = [Site("a", np.zeros((4, 3), np.float32), np.zeros(4), np.zeros((2, 3), np.float32),
                  np.zeros(2))]
    with pytest.raises(MedFedError, match="applies to images"):
        shift_sites(table, ShiftConfig(), 0)


def test_real_breastmnist_sites_are_shifted(shared_data):
    from medfed.datasets.sites import simulated_federation

    raw = {"dataset": {"name": "medmnist", "options": {"name": "breastmnist", "size": 28}},
           "partition": {"scheme": "iid", "sites": 5, "shift": True}, "seed": 3}
    shifted, _ = simulated_federation(validate(raw).to_json())
    raw["partition"].pop("shift")
    plain, _ = simulated_federation(validate(raw).to_json())
    means = [s.x_train.mean() for s in shifted]
    assert np.std(means) > 5 * np.std([s.x_train.mean() for s in plain])
    for a, b in zip(shifted, plain, strict=True):
        assert np.array_equal(a.y_train, b.y_train) and a.x_train.shape == b.x_train.shape
