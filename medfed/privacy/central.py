"""Central (client-level) DP: Flower's fixed-clipping strategy wrappers.

Each site's model update is clipped to ``privacy.clipping_norm`` (on the server, or on the
site with ``privacy.clipping=client``) and the server adds Gaussian noise to the aggregate.
The guarantee is client-level (a whole hospital's participation), accounted here with
Opacus' RDP accountant over the rounds: sampling rate = sites sampled / sites, no further
amplification. It protects hospitals from each other and from whoever sees the final model,
not from the server (the server sees clean updates).
"""

from __future__ import annotations

import math

from flwr.app import Context, Message
from flwr.clientapp.mod import fixedclipping_mod

from medfed.config import ExperimentConfig
from medfed.errors import MedFedError
from medfed.privacy.accounting import epsilon_of

CLIPPING_KEY = "clipping_norm"  # what Flower's client-side wrapper sends with each round


def central_clipping_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's ``fixedclipping_mod`` on train messages that ask for it; a no-op otherwise."""
    configs = list(msg.content.config_records.values())
    if any(CLIPPING_KEY in c for c in configs):
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


def sampled_sites(cfg: ExperimentConfig, n_sites: int) -> int:
    return max(1, min(n_sites, math.ceil(cfg.strategy.fraction_train * n_sites)))


def central_noise(cfg: ExperimentConfig, n_sites: int) -> float:
    """Noise multiplier meeting (epsilon, delta) at client level after all rounds."""
    p = cfg.privacy
    if p.noise_multiplier is not None:
        return p.noise_multiplier
    if p.delta >= 1.0 / n_sites:
        raise MedFedError(f"privacy.delta={p.delta:g} is not below 1/{n_sites} (central DP "
                          f"protects sites: n = {n_sites}); set --set privacy.delta=1e-5")
    from opacus.accountants.utils import get_noise_multiplier

    rate = sampled_sites(cfg, n_sites) / n_sites
    try:
        return float(get_noise_multiplier(target_epsilon=p.epsilon, target_delta=p.delta,
                                          sample_rate=rate, steps=cfg.rounds,
                                          accountant=p.accountant))
    except ValueError:
        raise MedFedError(f"privacy.epsilon={p.epsilon:g}: no noise multiplier meets it in "
                          f"{cfg.rounds} rounds; raise privacy.epsilon or lower rounds") from None


def wrap_strategy(strategy, cfg: ExperimentConfig, n_sites: int):
    """The strategy inside Flower's DifferentialPrivacy{Server,Client}SideFixedClipping."""
    if cfg.privacy.mode != "central":
        return strategy
    if cfg.strategy.name == "fedavg-partial":  # Flower's DP clipping needs every array
        raise MedFedError("privacy.mode central: Flower's central DP clips full updates, but "
                          "strategy fedavg-partial lets sites send part of the model; use "
                          "privacy.mode dp-sgd, or strategy.name fedavg if every site has "
                          "every modality")
    from flwr.serverapp.strategy import (
        DifferentialPrivacyClientSideFixedClipping,
        DifferentialPrivacyServerSideFixedClipping,
    )

    wrapper = (DifferentialPrivacyServerSideFixedClipping if cfg.privacy.clipping == "server"
               else DifferentialPrivacyClientSideFixedClipping)
    return wrapper(strategy, noise_multiplier=central_noise(cfg, n_sites),
                   clipping_norm=cfg.privacy.clipping_norm,
                   num_sampled_clients=sampled_sites(cfg, n_sites))


def central_report(cfg: ExperimentConfig, n_sites: int, rounds_done: int) -> dict:
    """The client-level guarantee the central mode gives, for report.json's ``privacy``."""
    sigma = central_noise(cfg, n_sites)
    rate = sampled_sites(cfg, n_sites) / n_sites
    eps = epsilon_of([(sigma, rate, rounds_done)], cfg.privacy.delta, cfg.privacy.accountant)
    return {"level": "client", "epsilon": eps, "noise_multiplier": sigma,
            "clipping_norm": cfg.privacy.clipping_norm, "clipping": cfg.privacy.clipping,
            "sample_rate": rate, "rounds": rounds_done,
            "guarantee": f"({eps:.3g}, {cfg.privacy.delta:g})-DP for each hospital's whole "
                         "participation (client level), against anyone who sees the global "
                         "models; the server itself sees the clipped, un-noised updates"}
