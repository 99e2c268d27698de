"""The coordinator's statistics query on the Deployment Engine (`medfed stats --superlink`).

Same ServerApp as training (``medfed.deploy.server_app``, run config ``job = "stats"``); the
hospitals' ClientApps answer ``query.stats`` with their own small-cell suppression (and their
audit mod records every reply). The run folder ``state/runs/RUN_ID/`` receives, atomically,
``stats_result.json`` (what the sites released, pooled) and ``status.json``.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Message
from flwr.serverapp import Grid

from medfed.config import RUN_EXPERIMENT, config_from_json
from medfed.deploy import audit, flower
from medfed.deploy.coordinator import push_and_pull
from medfed.federation.stats import run_stats
from medfed.io import atomic_write_json

RESULT = "stats_result.json"


def stats_main(grid: Grid, context: Context) -> None:
    """Run the two-pass query; the outcome (result or error) lands in the run folder."""
    conf = context.run_config
    cfg = config_from_json(str(conf[RUN_EXPERIMENT]))
    run_dir = Path(str(conf[flower.RUN_STATE_DIR]))
    run_id = str(conf.get(flower.RUN_DEPLOY_ID, run_dir.name))
    audit_path = run_dir.parent.parent / "audit.jsonl"
    poll = float(conf.get(flower.RUN_POLL_INTERVAL, 0.1))

    def exchange(grid: Grid, batch: list[Message], timeout: float) -> list[Message]:
        return push_and_pull(grid, batch, timeout, poll)[0]

    atomic_write_json(run_dir / "status.json", {"status": "running", "run_id": run_id})
    audit.append(audit_path, "stats_started", run_id=run_id)
    try:
        result = run_stats(grid, cfg, exchange,
                           timeout=float(conf.get(flower.RUN_ROUND_TIMEOUT, 600.0)),
                           wait_timeout=float(conf.get(flower.RUN_WAIT_TIMEOUT, 300.0)))
    except Exception as exc:
        atomic_write_json(run_dir / "status.json", {"status": "failed", "run_id": run_id,
                                                    "error": str(exc)})
        audit.append(audit_path, "stats_failed", run_id=run_id, error=str(exc)[:300])
        raise
    atomic_write_json(run_dir / RESULT, result)
    atomic_write_json(run_dir / "status.json", {"status": "finished", "run_id": run_id})
    audit.append(audit_path, "stats_finished", run_id=run_id, sites=sorted(result["sites"]))
