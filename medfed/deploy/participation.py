"""Who took part in each round of a deployed run, and what the model card says about it.

The coordinator notes every reply by round (``RoundParticipation``); after a round its
history record gains ``participants`` (node IDs that trained, that evaluated),
``site_eval`` (each evaluating node's metrics and test rows), ``site_train`` (training rows,
privacy spent) and ``finished_at``. The history lives in the round checkpoint, so it
survives a resume. ``card_participation`` turns a run's history into the card's view: per
round the site names, each site's last round with its metrics and date, the sites a pooled
figure covers and the registered hospitals that were missing at the end.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flwr.app import Message

from medfed.federation import messages

PRIVACY_PREFIXES = ("dp_", "epsilon", "delta", "privacy")


def _scalars(reply: Message, name: str) -> dict[str, float]:
    record = reply.content.metric_records[name]
    return {k: float(v) for k, v in record.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


class RoundParticipation:
    """Replies noted by round until the round's facts are taken into its history record."""

    def __init__(self) -> None:
        self.pending: dict[int, dict[str, Any]] = {}

    def record(self, reply: Message, rnd: int) -> None:
        kind = reply.metadata.message_type.split(".")[0]
        if kind not in ("train", "evaluate") or rnd < 1:
            return
        node = str(reply.metadata.src_node_id)
        facts = self.pending.setdefault(rnd, {"trained": {}, "evaluated": {}})
        names = list(reply.content.metric_records)
        values = _scalars(reply, messages.METRICS) if messages.METRICS in names else \
            (_scalars(reply, names[0]) if names else {})
        if kind == "train":
            facts["trained"][node] = {
                "n_train": int(values.get(messages.NUM_EXAMPLES, 0)),
                **{k: v for k, v in values.items() if k.startswith(PRIVACY_PREFIXES)}}
        else:
            n_test = int(values.pop(messages.NUM_EXAMPLES, 0))
            facts["evaluated"][node] = {"n_test": n_test, "metrics": values}

    def facts(self, rnd: int) -> dict[str, Any]:
        """Round ``rnd``'s participants, per-site reports and end time (then forgotten)."""
        facts = self.pending.pop(rnd, {"trained": {}, "evaluated": {}})
        for old in [r for r in self.pending if r < rnd]:
            self.pending.pop(old)
        return {"participants": {"trained": sorted(facts["trained"]),
                                 "evaluated": sorted(facts["evaluated"])},
                "site_train": facts["trained"], "site_eval": facts["evaluated"],
                "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def card_participation(history: list[dict[str, Any]], names: dict[str, str],
                       registered: list[str], chosen: int) -> dict[str, Any]:
    """The card's participation view of a run's ``history``.

    ``names``: node ID -> registered hospital name; ``registered``: every registered
    hospital; ``chosen``: the round whose weights the card describes. Rounds recorded before
    participation was tracked have no ``participants`` and are left out of ``rounds``."""
    def name(node: str) -> str:
        return names.get(node, f"node {node}")

    rounds = [{"round": h["round"], "date": h.get("finished_at"),
               "trained": sorted(name(n) for n in h["participants"]["trained"]),
               "evaluated": sorted(name(n) for n in h["participants"]["evaluated"])}
              for h in history if h.get("participants") and h["round"] <= chosen]
    last: dict[str, dict[str, Any]] = {}
    for h in history:
        if h["round"] > chosen:
            continue
        for node in set(h.get("site_train") or {}) | set(h.get("site_eval") or {}):
            entry = last.setdefault(name(node), {"node_id": node})
            entry.update({"last_round": h["round"], "last_date": h.get("finished_at")})
            entry.update((h.get("site_train") or {}).get(node, {}))
            if node in (h.get("site_eval") or {}):
                evaluated = h["site_eval"][node]
                entry.update({"n_test": evaluated["n_test"], "metrics": evaluated["metrics"],
                              "metrics_round": h["round"], "metrics_date": h.get("finished_at")})
    final = rounds[-1] if rounds else None
    at_end = set(final["trained"]) if final else set()
    missing = [{"site": site, "last_round": last.get(site, {}).get("last_round")}
               for site in sorted(registered) if site not in at_end]
    return {"rounds": rounds, "sites": last,
            "pooled_cover": {"round": final["round"], "sites": final["evaluated"]}
            if final else None,
            "trained_at_end": sorted(at_end), "missing_at_end": missing if final else []}


def dropout_warning(card: dict[str, Any]) -> str | None:
    """One line when registered hospitals were missing from the card's last round."""
    missing = card.get("participation", {}).get("missing_at_end") or []
    if not missing:
        return None
    parts = [f"{m['site']} (last took part in round {m['last_round']})"
             if m.get("last_round") else f"{m['site']} (never took part)" for m in missing]
    final = card["participation"]["pooled_cover"]
    return (f"round {final['round']} of this model was trained without "
            f"{', '.join(parts)}; its pooled metrics cover only "
            f"{', '.join(final['sites']) or 'no site'}")
