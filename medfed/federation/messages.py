"""What the ServerApp and the ClientApp say to each other: message types and record keys.

One module, so a key renamed on one side cannot silently go missing on the other. Keys that
Flower's own strategies write (``server-round``, ``proximal-mu``) or read (``num-examples``)
are Flower's names. The keys of Flower's run config and node config that MedFed sets live
in ``medfed.config`` (``RUN_*``, ``NODE_*``): privacy and deployment read them too.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord

# message types (besides Flower's "train" and "evaluate")
SITE_SUMMARY_ACTION = "site_summary"
SITE_SUMMARY = f"query.{SITE_SUMMARY_ACTION}"
STATS_ACTION = "stats"  # `medfed stats`: one pass of the statistics query (federation/stats.py)
STATS_MESSAGE = f"query.{STATS_ACTION}"
STATS = "stats"  # record of a stats reply
STATS_QUERY = "query"  # the query as JSON (in the CONFIG record)
STATS_REPLY = "stats-json"  # the site's answer as JSON: counts, sums, "<k" for small cells

# the Flower error code of a site that refuses to train (its privacy budget is spent)
BUDGET_EXHAUSTED = 4001

# secure aggregation (federation/secagg.py): the key stages are queries, the masked update
# answers the train message; a site refuses what the protocol does not allow with this code
SECAGG_ACTION = "secagg"
SECAGG_MESSAGE = f"query.{SECAGG_ACTION}"
SECAGG = "secagg"  # ConfigRecord of protocol fields, both directions
SECAGG_MASKED = "secagg-masked"  # ArrayRecord of the site's masked vector (int64, mod 2**62)
SECAGG_REFUSED = 4002
# ... and of a site whose policy refuses the experiment (medfed.deploy.policy)
POLICY_REFUSED = 4003

# record names inside a message's RecordDict
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
SUMMARY = "summary"

# the site summary (ConfigRecord ``summary`` + MetricRecord ``metrics``)
TASK = "task"
INPUT_SHAPE = "input-shape"
N_CLASSES = "n-classes"
STANDARDIZE = "standardize"
NUM_EXAMPLES = "num-examples"  # Flower's strategies weight replies by this key
N_TEST = "n-test"
FEATURE_SUM = "feature-sum"
FEATURE_SUMSQ = "feature-sumsq"
FEATURE_N = "feature-n"  # rows behind each feature's sums; 0: withheld (a small cell)
MIN_COUNT = "min-count"  # the site's k for small cells
NOISED = "noised"  # 1: count-like sums carry calibrated noise (privacy.mode set)

# the federation's feature scaling, sent with every train/evaluate config
FEATURE_MEAN = "feature-mean"
FEATURE_STD = "feature-std"

# written by Flower's strategies into the train config
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"

Scaling = tuple[np.ndarray, np.ndarray] | None


def scaling_record(scaling: Scaling) -> ConfigRecord:
    """(mean, std) as the ConfigRecord every train and evaluate message carries."""
    if scaling is None:
        return ConfigRecord()
    mean, std = scaling
    return ConfigRecord({FEATURE_MEAN: np.asarray(mean).tolist(),
                         FEATURE_STD: np.asarray(std).tolist()})


def read_scaling(record: ConfigRecord) -> Scaling:
    """(mean, std) float32 arrays from a config record, or None when it carries no scaling."""
    if FEATURE_MEAN not in record:
        return None
    return (np.asarray(record[FEATURE_MEAN], np.float32),
            np.asarray(record[FEATURE_STD], np.float32))
