"""Every random draw of a run comes from the experiment seed: one stream per (site, round, purpose).

``derive_seed(seed, *keys)`` hashes the experiment seed with the names of what is drawn, e.g.
``derive_seed(42, "site-1", 3, "train")``: two purposes never share a stream, and a site's
draws do not depend on which other sites exist or in which order they train. No MedFed code
reads torch's, numpy's or Python's global generator (``tests/test_reproducibility.py`` scans
for it); library code that can only read them (module initialisation, ``nn.Dropout``, Flower's
site sampling and central-DP noise) runs inside ``torch_seeded`` / ``globals_seeded``, which
seed them for the block and restore their state afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any


def derive_seed(seed: int, *keys: Any) -> int:
    """A 32-bit seed for ``keys`` (site, round, purpose...) under the experiment ``seed``."""
    text = "\x1f".join(str(k) for k in (int(seed), *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def numpy_rng(seed: int, *keys: Any):
    """A numpy ``Generator`` of its own for ``keys``."""
    import numpy as np

    return np.random.default_rng(derive_seed(seed, *keys))


def torch_generator(seed: int, *keys: Any, device: Any = "cpu"):
    """A ``torch.Generator`` on ``device`` of its own for ``keys``."""
    import torch

    return torch.Generator(device=device).manual_seed(derive_seed(seed, *keys))


@contextlib.contextmanager
def torch_seeded(seed: int, *keys: Any) -> Iterator[None]:
    """Torch's global generators (CPU and the CUDA device in use) seeded for ``keys`` inside
    the block, restored after it: for library code that takes no generator (weight
    initialisation, ``nn.Dropout``)."""
    import torch

    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(seed, *keys))
        yield


@contextlib.contextmanager
def globals_seeded(seed: int | None, *keys: Any) -> Iterator[None]:
    """Python's and numpy's global generators seeded for ``keys`` inside the block and
    restored after it (Flower's strategies sample sites and draw central-DP noise from them).
    ``seed`` None (a real federation): the block draws unseeded, as it would anyway."""
    if seed is None:
        yield
        return
    import random

    import numpy as np

    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(derive_seed(seed, *keys))
    np.random.seed(derive_seed(seed, *keys, "numpy"))
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


@contextlib.contextmanager
def deterministic_algorithms(device: Any) -> Iterator[bool]:
    """``torch.use_deterministic_algorithms(True)`` inside the block on CPU (every op MedFed
    uses has a deterministic CPU kernel); on CUDA left as it is (atomic-add kernels would
    raise). Yields whether the block runs deterministically."""
    import torch

    if str(getattr(device, "type", device)) != "cpu":
        yield False
        return
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield True
    finally:
        torch.use_deterministic_algorithms(before)
