"""What a ClientApp trains on: its simulated partition, or its hospital's own data folder."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from flwr.app import Context

from medfed.config import ExperimentConfig, config_from_json
from medfed.datasets import load_dataset
from medfed.datasets.base import Site, TableDataset
from medfed.datasets.sites import build_sites
from medfed.errors import MedFedError


@dataclass(frozen=True)
class DataInfo:
    """What the server may know about the data: shapes and label space, never rows."""

    task: str
    input_shape: tuple[int, ...]
    n_classes: int
    standardize: bool


def data_info(data: TableDataset) -> DataInfo:
    return DataInfo(task=data.task, input_shape=tuple(data.x.shape[1:]),
                    n_classes=max(len(data.class_names), int(data.y.max()) + 1),
                    standardize=data.standardize)


@lru_cache(maxsize=4)
def simulated_federation(experiment_json: str) -> tuple[list[Site], DataInfo]:
    """All virtual sites of one experiment (cached: every ClientApp of a process shares it)."""
    cfg = config_from_json(experiment_json)
    data = load_dataset(cfg.dataset.name, cfg.dataset.options)
    sites = build_sites(data, cfg.partition.scheme, cfg.partition.sites,
                        alpha=cfg.partition.alpha, test_fraction=cfg.partition.test_fraction,
                        min_size=cfg.partition.min_site_size, seed=cfg.partition_seed)
    return sites, data_info(data)


def experiment_config(context: Context) -> ExperimentConfig:
    if "experiment" not in context.run_config:
        raise MedFedError("run config has no 'experiment' entry; launch runs with `medfed run` "
                          "or `medfed simulate`")
    return _parsed(str(context.run_config["experiment"]))


@lru_cache(maxsize=8)
def _parsed(experiment_json: str) -> ExperimentConfig:
    return config_from_json(experiment_json)


def load_site(context: Context) -> tuple[Site, DataInfo]:
    """This node's site: ``partition-id`` in simulation, ``data-path`` in a real federation."""
    experiment_json = str(context.run_config["experiment"])
    if "partition-id" in context.node_config:
        sites, info = simulated_federation(experiment_json)
        return sites[int(context.node_config["partition-id"])], info
    if "data-path" in context.node_config:
        return hospital_site(experiment_json, str(context.node_config["data-path"]))
    raise MedFedError("node config has neither 'partition-id' (simulation) nor 'data-path' "
                      "(a hospital's site folder)")


@lru_cache(maxsize=4)
def hospital_site(experiment_json: str, data_path: str) -> tuple[Site, DataInfo]:
    """A real hospital's own folder (cached: a warm ClientApp process reads it once)."""
    from medfed.client.site_folder import load_site_folder

    cfg = config_from_json(experiment_json)
    site, data = load_site_folder(data_path, cfg.dataset.name, cfg.dataset.options,
                                  test_fraction=cfg.partition.test_fraction,
                                  seed=cfg.partition_seed)
    return site, data_info(data)
