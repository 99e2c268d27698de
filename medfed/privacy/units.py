"""The privacy unit of DP-SGD: who one sampled, clipped sample is (a patient, an ICU stay or a row).

A dataset says what its rows belong to (``TableDataset.unit`` and ``units``: one id per row).
DP-SGD then samples and clips whole units (``medfed.privacy.dp``), so the (epsilon, delta)
guarantee holds for a patient however many rows, slices or images they have. ``privacy.unit``:

- ``auto``: the data's own unit (``patient`` or ``stay``); data that cannot say whose a row is
  (e.g. MedMNIST: no patient ids) is refused, with one line naming ``privacy.unit=row``.
- ``patient`` / ``stay``: the same, but a check that the data's unit is that one.
- ``row``: one row is one sample, whatever the data says; the report says that patients with
  several rows are NOT protected as patients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medfed.errors import MedFedError

ROW_LEVEL = "row — patients with several rows are NOT protected as patients"
GUARANTEES = {
    "patient": "(epsilon, delta)-DP for each patient: all of a patient's rows, slices or images "
               "are sampled together and their summed gradient is clipped as one sample",
    "stay": "(epsilon, delta)-DP for each ICU stay: all hours of a stay are sampled together "
            "and their summed gradient is clipped as one sample; a patient with k stays has "
            "the group guarantee of k units",
    "row": "(epsilon, delta)-DP for each row only: a patient with k rows has the group "
           "guarantee of k rows (much weaker than the stated epsilon)",
}


@dataclass(frozen=True)
class PrivacyUnit:
    """The resolved unit: ``name`` patient|stay|row, the report's ``level`` and guarantee."""

    name: str

    @property
    def level(self) -> str:
        return ROW_LEVEL if self.name == "row" else self.name

    @property
    def guarantee(self) -> str:
        return GUARANTEES[self.name]

    @property
    def grouped(self) -> bool:
        """Rows are sampled and clipped per unit (False: one row is one sample)."""
        return self.name != "row"

    def as_dict(self) -> dict[str, str]:
        return {"unit": self.name, "level": self.level, "guarantee": self.guarantee}


def resolve_unit(requested: str, data_unit: str | None, where: str = "") -> PrivacyUnit:
    """The unit DP-SGD protects: ``requested`` (privacy.unit) against the data's own unit.

    Raises MedFedError when the data cannot establish the unit (and ``row`` was not set) or
    when the data's unit is not the one requested.
    """
    if requested == "row":
        return PrivacyUnit("row")
    if data_unit is None:
        raise MedFedError("privacy.mode=dp-sgd: the privacy unit cannot be established (the "
                          "data does not say which rows belong to the same patient)",
                          where=where or "dataset",
                          fix="give the rows' patient ids (e.g. a manifest patient_id), or set "
                              "privacy.unit=row to accept protection per row only")
    if requested not in ("auto", data_unit):
        raise MedFedError(f"privacy.unit={requested}: this data's unit is the {data_unit}",
                          where=where or "dataset",
                          fix=f"set privacy.unit=auto (or {data_unit})")
    return PrivacyUnit(data_unit)


def unit_index(units: np.ndarray | None, n_rows: int) -> tuple[np.ndarray, int]:
    """(n_rows,) dense unit index 0..U-1 of each row, and U; None: every row its own unit."""
    if units is None:
        return np.arange(n_rows), n_rows
    if len(units) != n_rows:
        raise ValueError(f"{len(units)} unit ids for {n_rows} rows")
    _, index = np.unique(np.asarray(units).astype(str), return_inverse=True)
    return index.reshape(-1), int(index.max()) + 1 if n_rows else 0


def one_row_each(units: np.ndarray | None) -> bool:
    """True when no unit has two rows (the fast row-level path is then per unit too)."""
    return units is None or len(np.unique(np.asarray(units).astype(str))) == len(units)
