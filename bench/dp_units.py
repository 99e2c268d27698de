"""DP-SGD seconds per local round, row-level vs patient/stay-level (privacy units).

Prints ONE JSON line: for a tabular config (breast-cancer: one row per patient, so both
levels take Opacus' own path) and the sepsis window config (real PhysioNet stays under
$MEDFED_DATA_DIR/physionet2019-sample when present, else generated stays), the median seconds
of one local DP-SGD round (one epoch) at one site with privacy.unit=row and with the data's
own unit, plus steps, sample rate and units.

    MEDFED_DATA_DIR=/work/shared/data python bench/dp_units.py [--stays 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def _sepsis_options(stays: int, scratch: Path) -> tuple[dict, str]:
    real = Path(os.environ.get("MEDFED_DATA_DIR", "/nonexistent")) / "physionet2019-sample"
    if (real / "training_setA").is_dir():
        return {"path": str(real), "max_stays": stays}, "real PhysioNet 2019 stays"
    from medfed.datasets.timeseries.sepsis_demo import write_demo

    write_demo(scratch / "sepsis", sites=2, patients=stays, seed=0)
    return {"path": str(scratch / "sepsis")}, "generated stays (sepsis_demo)"


def _round_seconds(raw: dict, unit: str, repeats: int) -> dict:
    from medfed.config import validate
    from medfed.datasets.sites import simulated_federation
    from medfed.models import for_experiment
    from medfed.privacy.accounting import steps_per_epoch
    from medfed.privacy.dp import train_dp
    from medfed.privacy.units import resolve_unit, unit_index
    from medfed.tasks import get_task

    cfg = validate({**raw, "privacy": {"mode": "dp-sgd", "unit": unit}})
    sites, info = simulated_federation(cfg.to_json())
    site = sites[0]
    grouped = resolve_unit(unit, site.unit).grouped
    units = site.units_train if grouped else None
    n_units = unit_index(units, site.n_train)[1]
    times, result = [], None
    for r in range(repeats):
        model = for_experiment(cfg, info, seed=r)
        start = time.perf_counter()
        result = train_dp(model, site.x_train, site.y_train, get_task(info.task), cfg.train,
                          noise_multiplier=1.0, max_grad_norm=1.0, epochs=1, seed=r,
                          units=units)
        times.append(time.perf_counter() - start)
    return {"seconds_per_round": round(statistics.median(times), 3), "rows": site.n_train,
            "units": n_units, "steps": result.steps,
            "sample_rate": round(1 / steps_per_epoch(n_units, cfg.train.batch_size), 5),
            "mode": result.grad_sample_mode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stays", type=int, default=300, help="stays per sepsis site")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        options, source = _sepsis_options(args.stays, Path(scratch))
        sepsis = {"dataset": {"name": "sepsis", "options": {**options, "features": "clinical"}},
                  "partition": {"scheme": "natural"}, "model": {"name": "mlp", "hidden": [32]},
                  "train": {"batch_size": 64, "optimizer": "sgd", "lr": 0.01}, "seed": 0}
        tabular = {"dataset": {"name": "breast-cancer"},
                   "partition": {"scheme": "iid", "sites": 3},
                   "model": {"name": "mlp", "hidden": [32]},
                   "train": {"batch_size": 32, "optimizer": "sgd", "lr": 0.05}, "seed": 0}
        out: dict = {"bench": "dp_units", "cpus": os.cpu_count()}
        for name, raw, own in (("breast-cancer", tabular, "patient"),
                               ("sepsis-window", sepsis, "stay")):
            out[name] = {"row": _round_seconds(raw, "row", args.repeats),
                         own: _round_seconds(raw, "auto", args.repeats)}
        out["sepsis-window"]["data"] = source
    print(json.dumps(out))


if __name__ == "__main__":
    main()
