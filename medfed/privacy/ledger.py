"""Per-site privacy ledger: one JSON file per hospital recording every round's spend.

Crash consistency: every write goes through a temporary file, fsync and rename (medfed.io),
so a crash leaves the previous ledger or the new one, never half of one. A spend is keyed by
(run id, round): recording it again after a resumed round does not double-count it. The file
carries a SHA-256 of its spends; a file that does not parse or check out is reported as
corrupted and is NEVER silently reset (the record of what was spent would be lost).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medfed.errors import MedFedError
from medfed.io import atomic_write_json
from medfed.privacy.accounting import History, epsilon_of, merge

FORMAT = "medfed-privacy-ledger/1"


@dataclass(frozen=True)
class Spend:
    """One round of DP-SGD at one site (the accountant history entry plus context)."""

    run_id: str
    round: int
    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    epsilon_after: float
    delta: float
    accountant: str
    grad_sample_mode: str = ""
    time: float = 0.0
    unit: str = ""  # the privacy unit: patient, stay or row ("": written before units)


def safe_name(site: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", site) or "site"


def checksum(spends: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(spends, sort_keys=True).encode()).hexdigest()


class Ledger:
    """The ledger of one site, at ``<folder>/<site>.json``."""

    def __init__(self, path: Path, site: str, spends: list[Spend]) -> None:
        self.path, self.site, self.spends = path, site, spends

    @classmethod
    def open(cls, folder: str | Path, site: str) -> Ledger:
        """Load the site's ledger (an empty one when the file does not exist yet)."""
        path = Path(folder) / f"{safe_name(site)}.json"
        if not path.exists():
            return cls(path, site, [])
        return cls(path, site, read_spends(path))

    def history(self) -> History:
        return merge((s.noise_multiplier, s.sample_rate, s.steps) for s in self.spends)

    def epsilon(self, delta: float, accountant: str = "rdp") -> float:
        return epsilon_of(self.history(), delta, accountant)

    def has(self, run_id: str, rnd: int) -> bool:
        return any(s.run_id == run_id and s.round == rnd for s in self.spends)

    def record(self, spend: Spend) -> bool:
        """Append ``spend`` and write atomically; False if (run, round) was already there."""
        if self.has(spend.run_id, spend.round):
            return False
        spends = [*self.spends, spend]
        write_spends(self.path, self.site, spends)
        self.spends = spends  # only once the file holds it
        return True

    def runs(self) -> list[str]:
        return list(dict.fromkeys(s.run_id for s in self.spends))


def write_spends(path: Path, site: str, spends: list[Spend]) -> None:
    rows = [asdict(s) for s in spends]
    atomic_write_json(path, {"format": FORMAT, "site": site, "updated": time.time(),
                             "spends": rows, "sha256": checksum(rows)})


def corrupted(path: Path, why: str) -> MedFedError:
    return MedFedError(f"privacy ledger is corrupted ({why})", where=str(path),
                       fix="MedFed never resets a ledger: restore this file from a backup (the "
                       "epsilon it records was really spent), or move it aside only if you "
                       "accept losing that record")


class _SpendRow(BaseModel):
    """One stored spend, strictly typed (a number in a string is damage, not data)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    run_id: str
    round: Annotated[int, Field(ge=0)]
    steps: Annotated[int, Field(ge=0)]
    sample_rate: Annotated[float, Field(ge=0, le=1)]
    noise_multiplier: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    max_grad_norm: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    epsilon_after: Annotated[float, Field(ge=0)]
    delta: Annotated[float, Field(gt=0, lt=1)]
    accountant: str
    grad_sample_mode: str = ""
    time: float = 0.0
    unit: str = ""  # the privacy unit: patient, stay or row ("": written before units)


def _read_document(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise corrupted(path, "binary, not JSON text") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise corrupted(path, f"unreadable JSON: {exc.__class__.__name__}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise corrupted(path, f"not a {FORMAT} file")
    return data


def read_spends(path: Path) -> list[Spend]:
    """Every spend of a ledger file, checked: format, checksum, then each field's type."""
    data = _read_document(path)
    rows = data.get("spends")
    if not isinstance(rows, list) or data.get("sha256") != checksum(rows):
        raise corrupted(path, "checksum mismatch: edited or partly written")
    if not isinstance(data.get("site", ""), str):
        raise corrupted(path, "'site' is not text")
    spends = []
    for number, row in enumerate(rows, start=1):
        try:
            spends.append(Spend(**_SpendRow.model_validate(row).model_dump()))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "entry"
            raise corrupted(path, f"spend {number}: {field!r} {err['msg'].lower()}") from None
    return spends


def open_folder(folder: str | Path) -> dict[str, Ledger]:
    """Every site ledger in ``folder`` by site name (for ``medfed privacy report``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MedFedError("no such ledger folder", where=str(folder),
                          fix="pass the privacy/ folder of a run, e.g. --ledger runs/bc/privacy")
    ledgers = {}
    for path in sorted(folder.glob("*.json")):
        spends = read_spends(path)
        site = _read_document(path).get("site", path.stem)
        ledgers[site] = Ledger(path, site, spends)
    return ledgers
