"""Differential privacy per hospital: DP-SGD (Opacus) with a cumulative, enforced budget.

- ``accounting``: epsilon from an accountant history; the noise plan for the whole training.
- ``ledger``: one crash-consistent JSON file per site recording every round's spend.
- ``dp``: Opacus DP-SGD local training (ghost clipping, hooks as fallback; units of several
  rows sampled and clipped whole).
- ``units``: the privacy unit (patient, stay or row) a dataset establishes and the report names.
- ``site``: what a ClientApp does each round (plan, check budget, train, record).
- ``central``: client-level central DP with Flower's fixed-clipping strategy wrappers.
- ``baseline``, ``simulation``, ``report``: the simulation's DP references, checks and report.

The automatic Opacus fix of a model lives with the models (``medfed.models.dp_compat``).
"""
