"""Federated statistics: the coordinator's two-pass query and the site's handler.

Pass 1 (``ranges``) asks each site for its variables' kinds, frequent levels and rounded
ranges; the coordinator agrees on histogram bins (or takes ``stats.edges`` / the declared
clipping bounds, with no first pass, under ``stats.privacy``). Pass 2 (``summary``) asks for
counts, sums and histograms on those bins. Every site suppresses its own small cells
(``medfed.privacy.site_stats``); the coordinator only adds up what arrived, so pooled
mean and standard deviation are exact (from per-site sums) and every pooled figure says which
sites' cells were suppressed. Same ``Grid`` as training: in-process, Ray or the Deployment
Engine.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.serverapp import Grid

from medfed.config import (
    NODE_DATA_PATH,
    NODE_PARTITION_ID,
    RUN_EXPERIMENT,
    ExperimentConfig,
    config_from_json,
)
from medfed.datasets.stats_view import SiteView, hospital_view, simulated_views
from medfed.errors import MedFedError
from medfed.federation import messages
from medfed.federation.rounds import default_exchange, wait_for_sites
from medfed.privacy import site_stats
from medfed.privacy.ledger import Ledger
from medfed.privacy.site import ledger_dir

log = logging.getLogger("medfed.server")
NODE_MIN_COUNT = "stats-min-count"  # a hospital's own floor (node config); never lowered
SITE_FLOOR = 10  # a real site's floor when its node config sets none
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
Exchange = Callable[[Grid, list[Message], float], list[Message]]


# --- the site ------------------------------------------------------------------------------


def site_view(context: Context) -> tuple[SiteView, ExperimentConfig, bool]:
    """(this node's view, the experiment, simulated?)."""
    experiment = str(context.run_config[RUN_EXPERIMENT])
    cfg = config_from_json(experiment)
    if NODE_PARTITION_ID in context.node_config:
        views = simulated_views(experiment)
        return views[int(context.node_config[NODE_PARTITION_ID])], cfg, True
    if NODE_DATA_PATH in context.node_config:
        return hospital_view(experiment, str(context.node_config[NODE_DATA_PATH])), cfg, False
    raise MedFedError("node config has neither 'partition-id' nor 'data-path'")


def site_min_count(context: Context, cfg: ExperimentConfig, simulated: bool,
                   asked: int) -> int:
    """The site's threshold: its own floor (node config, else the experiment's in simulation,
    else 10), raised to what the query asks, never lowered by it."""
    floor = context.node_config.get(NODE_MIN_COUNT)
    if floor is None:
        floor = cfg.stats.min_count if simulated else SITE_FLOOR
    return max(int(floor), int(asked))


def stats_query(msg: Message, context: Context) -> Message:
    """The ClientApp's handler of ``query.stats``: one pass of the statistics query."""
    view, cfg, simulated = site_view(context)
    query = json.loads(str(msg.content[messages.CONFIG][messages.STATS_QUERY]))
    k = site_min_count(context, cfg, simulated, int(query.get("min_count", 1)))
    if query["pass"] == site_stats.RANGES:
        reply = site_stats.answer_ranges(view, k, cfg.stats.max_levels)
    else:
        noise = None
        if cfg.stats.privacy is not None:
            try:
                noise = _site_noise(view, cfg, context, query)
            except site_stats.StatsBudgetExhausted as exc:
                return Message(error=Error(messages.BUDGET_EXHAUSTED, str(exc)), reply_to=msg)
        reply = site_stats.answer_summary(view, query, k, noise)
        if noise is not None and noise.releases > site_stats.planned_releases(view, query):
            raise RuntimeError("more noised releases than the ledger recorded")  # a bug
        if noise is not None:
            reply["privacy"] = {"mechanism": "gaussian", "noise_multiplier": noise.sigma,
                                "releases": noise.releases,
                                "epsilon": cfg.stats.privacy.epsilon,
                                "delta": cfg.stats.privacy.delta}
    reply["min_count"] = k
    record = ConfigRecord({messages.STATS_REPLY: json.dumps(reply)})
    return Message(RecordDict({messages.STATS: record}), reply_to=msg)


def _site_noise(view: SiteView, cfg: ExperimentConfig, context: Context,
                query: dict) -> site_stats.Noise:
    site_stats.check_noise_setup(view)
    releases = site_stats.planned_releases(view, query)
    ledger = Ledger.open(ledger_dir(context, cfg), view.name)
    sigma, _ = site_stats.spend_for_query(ledger, cfg, cfg.stats.privacy, str(query["id"]),
                                          releases)
    return site_stats.Noise(sigma, np.random.default_rng())


# --- the coordinator -----------------------------------------------------------------------


def ask(grid: Grid, nodes: list[int], query: dict, exchange: Exchange,
        timeout: float) -> tuple[dict[int, dict], dict[str, str]]:
    """Send ``query`` to every node: ({node: reply}, {node: refusal or error})."""
    content = ConfigRecord({messages.STATS_QUERY: json.dumps(query)})
    batch = [Message(RecordDict({messages.CONFIG: content}), dst_node_id=node,
                     message_type=messages.STATS_MESSAGE) for node in nodes]
    replies, failed = {}, {}
    for reply in exchange(grid, batch, timeout):
        node = int(reply.metadata.src_node_id)
        if reply.has_error():
            failed[str(node)] = reply.error.reason
            log.warning("site %s did not answer the statistics query: %s", node,
                        reply.error.reason)
        else:
            replies[node] = json.loads(str(reply.content[messages.STATS][messages.STATS_REPLY]))
    return replies, failed


def run_stats(grid: Grid, cfg: ExperimentConfig, exchange: Exchange = default_exchange,
              timeout: float = 3600.0, wait_timeout: float = 300.0,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The whole query: wait for sites, agree on bins, collect summaries, pool them."""
    check_bins(cfg)
    expected = None if cfg.partition.scheme == "natural" else cfg.partition.sites
    nodes = wait_for_sites(grid, min(cfg.strategy.min_sites, cfg.partition.sites),
                           wait_timeout, expected=expected)
    query_id = uuid.uuid4().hex[:12]
    failed: dict[str, str] = {}
    if cfg.stats.privacy is None:
        _say(progress, f"pass 1 of 2: ranges from {len(nodes)} sites")
        ranges, failed = ask(grid, nodes, {"pass": site_stats.RANGES, "id": query_id,
                                           "min_count": cfg.stats.min_count}, exchange, timeout)
        if not ranges:
            raise MedFedError(f"no site answered the statistics query ({failed})")
        query = agree(cfg, list(ranges.values()))
    else:
        query = declared_query(cfg)
    query.update({"pass": site_stats.SUMMARY, "id": query_id, "min_count": cfg.stats.min_count})
    _say(progress, f"pass {1 if cfg.stats.privacy else 2} of {1 if cfg.stats.privacy else 2}: "
         f"summaries from {len(nodes)} sites")
    summaries, refused = ask(grid, nodes, query, exchange, timeout)
    failed.update(refused)
    if not summaries:
        raise MedFedError("no site answered the statistics summary: "
                          + "; ".join(f"node {n}: {r}" for n, r in failed.items()))
    return pool(cfg, query, sorted(summaries.values(), key=lambda r: r["site"]), failed)


def _say(progress: Callable[[str], None] | None, text: str) -> None:
    if progress is not None:
        progress(text)


def agree(cfg: ExperimentConfig, ranges: list[dict]) -> dict[str, Any]:
    """Bins and levels every site is asked for, from the sites' rounded ranges and levels."""
    numeric, categorical, not_shared = {}, {}, []
    names = list(dict.fromkeys(v for r in ranges for v in r["variables"]))
    for name in names:
        shapes = [r["variables"][name] for r in ranges if name in r["variables"]]
        known = [s for s in shapes if s["range"] is not None or s["levels"] is not None]
        if not known:
            not_shared.append(name)
        elif _categorical(known, cfg.stats.max_levels) and name not in cfg.stats.edges:
            categorical[name] = sorted({lv for s in known for lv in s["levels"]}, key=str)
        else:
            edges = cfg.stats.edges.get(name) or _edges(known, cfg.stats.bins)
            if edges is None:
                not_shared.append(name)
            else:
                numeric[name] = edges
    query: dict[str, Any] = {"numeric": numeric, "categorical": categorical,
                             "not_shared": not_shared}
    times = [r["survival"]["time_max"] for r in ranges if r.get("survival")]
    times = [t for t in times if t]
    if times:
        query["km_edges"] = np.linspace(0.0, max(times), cfg.stats.km_intervals + 1).tolist()
    for key, out in (("intensity_range", "intensity_edges"), ("lesion_range", "lesion_edges")):
        spans = [r["images"][key] for r in ranges if r.get("images") and r["images"][key]]
        if spans:
            query[out] = _linspace(min(s[0] for s in spans), max(s[1] for s in spans),
                                   cfg.stats.bins)
    return query


def _categorical(shapes: list[dict], max_levels: int) -> bool:
    if any(s["kind"] == "categorical" for s in shapes):
        return True
    if any(s["levels"] is None for s in shapes):
        return False
    return len({lv for s in shapes for lv in s["levels"]}) <= max_levels


def _edges(shapes: list[dict], bins: int) -> list[float] | None:
    spans = [s["range"] for s in shapes if s["range"] is not None]
    if not spans:
        return None
    return _linspace(min(s[0] for s in spans), max(s[1] for s in spans), bins)


def _linspace(low: float, high: float, bins: int) -> list[float]:
    high = high if high > low else low + 1.0
    return [float(v) for v in np.linspace(low, high, bins + 1)]


def check_bins(cfg: ExperimentConfig) -> None:
    """Fixed bins must increase; clipping bounds must be (low, high) with low < high."""
    for name, edges in cfg.stats.edges.items():
        if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise MedFedError(f"bin edges {edges} do not increase", where=f"stats.edges.{name}",
                              fix="give at least two strictly increasing numbers")
    bounds = cfg.stats.privacy.bounds if cfg.stats.privacy else {}
    for name, (low, high) in bounds.items():
        if not low < high:
            raise MedFedError(f"clipping range [{low}, {high}] is empty",
                              where=f"stats.privacy.bounds.{name}",
                              fix="give [low, high] with low < high")


def declared_query(cfg: ExperimentConfig) -> dict[str, Any]:
    """Under ``stats.privacy`` no data-dependent pass: bins span the declared bounds."""
    private = cfg.stats.privacy
    numeric = {name: cfg.stats.edges.get(name) or _linspace(lo, hi, cfg.stats.bins)
               for name, (lo, hi) in private.bounds.items() if name != "survival_time"}
    query: dict[str, Any] = {"numeric": numeric, "categorical": {},
                             "bounds": {n: list(b) for n, b in private.bounds.items()}}
    if "survival_time" in private.bounds:
        lo, hi = private.bounds["survival_time"]
        query["km_edges"] = np.linspace(lo, hi, cfg.stats.km_intervals + 1).tolist()
    return query


# --- pooling -------------------------------------------------------------------------------


def known(value: Any) -> bool:
    """True for a released number, False for a suppressed ``"<k"`` cell or a gap."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def pool(cfg: ExperimentConfig, query: dict, sites: list[dict],
         failed: dict[str, str]) -> dict[str, Any]:
    """Pooled statistics (over the sites that answered) plus each site's own."""
    k = max([cfg.stats.min_count, *(s.get("min_count", 0) for s in sites)])
    result: dict[str, Any] = {
        "min_count": k, "unit": sites[0]["unit"], "source": sites[0]["source"],
        "sites": {s["site"]: s for s in sites}, "not_answered": failed,
        "query": {key: v for key, v in query.items() if key not in ("pass",)},
        "pooled": {"rows": _sum_cells([s["rows"] for s in sites], sites),
                   "individuals": _sum_cells([s["individuals"] for s in sites], sites),
                   "variables": {}},
    }
    for name in query.get("numeric", {}):
        result["pooled"]["variables"][name] = pool_numeric(name, query["numeric"][name], sites)
    for name in query.get("categorical", {}):
        result["pooled"]["variables"][name] = pool_categorical(name, sites)
    if any("labels" in s for s in sites):
        result["pooled"]["labels"] = _pool_counts([s.get("labels", {}) for s in sites], sites)
    if any("survival" in s for s in sites):
        result["pooled"]["survival"] = pool_survival(sites)
    if any("images" in s for s in sites):
        result["pooled"]["images"] = pool_images(query, sites)
    privacy = [s["privacy"] for s in sites if "privacy" in s]
    if privacy:
        result["privacy"] = {s["site"]: s["privacy"] for s in sites if "privacy" in s}
    result["threshold"] = cfg.stats.flag_distance
    result["flags"] = harmonisation_flags(result, cfg.stats.flag_distance)
    return result


def _sum_cells(values: list[Any], sites: list[dict]) -> dict[str, Any]:
    """Sum of the released cells; which sites' cells were suppressed."""
    total = sum(v for v in values if known(v))
    hidden = [s["site"] for s, v in zip(sites, values, strict=True) if not known(v) and v]
    return {"count": _int(total), "suppressed_at": hidden}


def _int(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def moments(n: float, total: float, squares: float) -> tuple[float, float]:
    """(mean, sample standard deviation, ddof 1) from a count, a sum and a sum of squares."""
    mean = total / n
    var = max(squares - total * total / n, 0.0) / (n - 1) if n > 1 else float("nan")
    return mean, math.sqrt(var)


def pool_numeric(name: str, edges: list[float], sites: list[dict]) -> dict[str, Any]:
    entries = [(s["site"], s["variables"].get(name)) for s in sites]
    entries = [(site, e) for site, e in entries if e is not None]
    used = [(site, e) for site, e in entries if e.get("summarised") and known(e.get("n"))]
    out: dict[str, Any] = {
        "kind": "numeric", "edges": edges,
        "sites_summarised": [site for site, _ in used],
        "sites_not_summarised": [site for site, e in entries if (site, e) not in used],
        "missing": _sum_cells([e.get("missing") for _, e in entries],
                              [{"site": s} for s, _ in entries]),
    }
    if not used:
        return out
    n = sum(e["n"] for _, e in used)
    total, squares = sum(e["sum"] for _, e in used), sum(e["sumsq"] for _, e in used)
    mean, std = moments(n, total, squares)
    hist, hidden = merged_hist([e["hist"] for _, e in used], len(edges) - 1)
    out.update({"n": _int(n), "mean": mean, "std": std, "hist": hist,
                "suppressed_bins": hidden,
                "quantiles": hist_quantiles(np.asarray(edges), np.asarray(hist))})
    out["per_site"] = {site: dict(zip(("mean", "std"), moments(e["n"], e["sum"], e["sumsq"]),
                                      strict=True)) for site, e in used if e["n"] > 0}
    return out


def merged_hist(hists: list[list[Any]], n_bins: int) -> tuple[list[int | float], int]:
    """Bin-wise sum of released cells; the number of suppressed cells left out."""
    total = np.zeros(n_bins)
    hidden = 0
    for hist in hists:
        for i, value in enumerate(hist):
            if known(value):
                total[i] += value
            elif value:
                hidden += 1
    return [_int(v) for v in total], hidden


def hist_quantiles(edges: np.ndarray, hist: np.ndarray) -> dict[str, float]:
    """Quantiles by linear interpolation within the bins of a histogram."""
    total = hist.sum()
    if total <= 0:
        return {}
    cdf = np.concatenate([[0.0], np.cumsum(hist) / total])
    return {f"q{int(q * 100):02d}": float(np.interp(q, cdf, edges)) for q in QUANTILES}


def pool_categorical(name: str, sites: list[dict]) -> dict[str, Any]:
    entries = [(s["site"], s["variables"].get(name)) for s in sites]
    entries = [(site, e) for site, e in entries if e is not None]
    used = [(site, e) for site, e in entries if e.get("summarised")]
    counts = _pool_counts([{**e["counts"], "(other levels)": e["other"]} for _, e in used],
                          [{"site": site} for site, _ in used])
    return {"kind": "categorical", "counts": counts,
            "sites_summarised": [site for site, _ in used],
            "missing": _sum_cells([e.get("missing") for _, e in entries],
                                  [{"site": s} for s, _ in entries])}


def _pool_counts(maps: list[dict[str, Any]], sites: list[dict]) -> dict[str, dict[str, Any]]:
    keys = list(dict.fromkeys(key for m in maps for key in m))
    return {key: _sum_cells([m.get(key, 0) for m in maps], sites) for key in keys}


def km_curve(blocks: list[dict]) -> list[dict[str, float]]:
    """Life-table (actuarial) survival at the end of each block:
    S *= 1 - events / (at risk - censored / 2)."""
    survival, curve = 1.0, []
    for block in blocks:
        if not all(known(block[key]) for key in ("at_risk", "events", "censored")):
            continue
        exposed = block["at_risk"] - block["censored"] / 2
        if exposed > 0:
            survival *= max(1.0 - block["events"] / exposed, 0.0)
        curve.append({"time": block["end"], "survival": survival})
    return curve


def pool_survival(sites: list[dict]) -> dict[str, Any]:
    entries = [s for s in sites if "survival" in s]
    return {"events": _sum_cells([s["survival"]["events"] for s in entries], entries),
            "censored": _sum_cells([s["survival"]["censored"] for s in entries], entries),
            "km_per_site": {s["site"]: km_curve(s["survival"].get("km", [])) for s in entries}}


def pool_images(query: dict, sites: list[dict]) -> dict[str, Any]:
    entries = [s for s in sites if s.get("images", {}).get("summarised")]
    out: dict[str, Any] = {"n": _sum_cells([s.get("images", {}).get("n") for s in sites if
                                            "images" in s], [s for s in sites if "images" in s])}
    for fact in site_stats.IMAGE_FACTS:
        out[fact] = _pool_counts([s["images"][fact] for s in entries], entries)
    for key, edges in (("intensity", "intensity_edges"), ("lesion_ml", "lesion_edges")):
        parts = [s["images"][key] for s in entries if key in s["images"]]
        if parts:
            n = sum(p["n"] for p in parts)
            mean, std = moments(n, sum(p["sum"] for p in parts), sum(p["sumsq"] for p in parts))
            hist, hidden = merged_hist([p["hist"] for p in parts], len(query[edges]) - 1)
            out[key] = {"n": n, "mean": mean, "std": std, "edges": query[edges], "hist": hist,
                        "suppressed_bins": hidden,
                        "quantiles": hist_quantiles(np.asarray(query[edges]), np.asarray(hist))}
    return out


# --- harmonisation -------------------------------------------------------------------------

MAX_IMPUTED = 0.25  # a histogram more than this share suppressed is not compared


def imputed(hist: list[Any], total: Any) -> tuple[np.ndarray, float] | None:
    """Counts with the hidden mass (the released total minus the released cells) spread
    evenly over the suppressed cells, and the share so imputed; None without a total."""
    if not known(total) or total <= 0:
        return None
    counts = np.asarray([v if known(v) else 0 for v in hist], float)
    hidden = [i for i, v in enumerate(hist) if not known(v) and v]
    mass = max(float(total) - counts.sum(), 0.0)
    if hidden:
        counts[hidden] = mass / len(hidden)
    return counts, mass / float(total)


def ks_distance(x: np.ndarray, y: np.ndarray) -> float | None:
    """Kolmogorov-Smirnov distance between two histograms on the same bins."""
    if x.sum() <= 0 or y.sum() <= 0:
        return None
    return float(np.max(np.abs(np.cumsum(x) / x.sum() - np.cumsum(y) / y.sum())))


def site_histograms(result: dict) -> dict[str, dict[str, tuple[list[Any], Any]]]:
    """{variable: {site: (histogram, its total)}} for numeric variables and image
    intensities."""
    out: dict[str, dict[str, tuple[list[Any], Any]]] = {}
    for site, reply in result["sites"].items():
        for name, entry in reply.get("variables", {}).items():
            if entry.get("summarised") and entry.get("hist"):
                out.setdefault(name, {})[site] = (entry["hist"], entry["n"])
        intensity = reply.get("images", {}).get("intensity")
        if intensity:
            out.setdefault("image intensity", {})[site] = (intensity["hist"], intensity["n"])
    return out


def harmonisation_flags(result: dict, threshold: float) -> list[dict[str, Any]]:
    """Sites whose histogram differs from at least half of the other sites' by a KS distance
    (at bin resolution) above ``threshold`` (the lower median of its pairwise distances);
    suppressed cells share the hidden mass evenly; a histogram more than 25 % hidden is not
    compared."""
    flags = []
    for name, hists in site_histograms(result).items():
        usable = {s: imputed(h, total) for s, (h, total) in hists.items()}
        usable = {s: c for s, (c, share) in ((s, v) for s, v in usable.items() if v)
                  if share <= MAX_IMPUTED}
        if len(usable) < 2:
            continue
        for site, counts in usable.items():
            pairs = [ks_distance(counts, c) for s, c in usable.items() if s != site]
            pairs = sorted(d for d in pairs if d is not None)
            distance = pairs[(len(pairs) - 1) // 2] if pairs else None  # the lower median
            if distance is not None and distance > threshold:
                flags.append({"variable": name, "site": site, "distance": round(distance, 3),
                              "threshold": threshold})
    return sorted(flags, key=lambda f: -f["distance"])
