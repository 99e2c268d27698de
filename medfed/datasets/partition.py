"""Split one dataset into virtual hospitals with flwr-datasets' partitioners.

Schemes: ``iid`` (equal shuffled shares), ``dirichlet`` (label skew, ``alpha``: smaller is more
skewed), ``quantity`` (size skew: site sizes drawn from Dirichlet(``alpha``)), ``natural`` (one
site per value of a column, e.g. the hospital). Each draw has its own stream of the seed
(``medfed.seeds``): row order, site sizes, Dirichlet shares.
"""

from __future__ import annotations

import numpy as np

from medfed.errors import MedFedError
from medfed.seeds import derive_seed, numpy_rng


def _hf_table(labels: np.ndarray, groups: np.ndarray | None, seed: int):
    """A HuggingFace table of (row, label[, site]) rows in a seeded random order."""
    from datasets import Dataset

    order = numpy_rng(seed, "partition", "order").permutation(len(labels))
    columns = {"row": order, "label": labels[order]}
    if groups is not None:
        columns["site"] = groups[order].astype(str)
    return Dataset.from_dict(columns)


def quantity_sizes(n: int, n_sites: int, alpha: float, min_size: int, seed: int) -> list[int]:
    """Site sizes summing to ``n``, proportions ~ Dirichlet(alpha), each at least ``min_size``."""
    if n_sites * min_size > n:
        raise MedFedError(f"partition: {n_sites} sites x {min_size} rows exceed the {n} rows; "
                          "lower partition.sites or partition.min_site_size")
    share = numpy_rng(seed, "partition", "sizes").dirichlet(np.full(n_sites, alpha))
    sizes = min_size + np.floor(share * (n - n_sites * min_size)).astype(int)
    sizes[np.argmax(sizes)] += n - sizes.sum()  # rounding remainder to the largest site
    return sizes.tolist()


def partition_rows(labels: np.ndarray, scheme: str, n_sites: int, *, alpha: float = 0.5,
                   groups: np.ndarray | None = None, min_size: int = 10,
                   seed: int = 42) -> list[tuple[str, np.ndarray]]:
    """Return ``[(site_name, row_indices), ...]`` covering every row exactly once."""
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        NaturalIdPartitioner,
        SizePartitioner,
    )

    if scheme == "natural":
        if groups is None:
            raise MedFedError("partition.scheme: natural needs a site column; this dataset has "
                              "none (csv: set dataset.options.site_column) or use iid/dirichlet")
        partitioner = NaturalIdPartitioner(partition_by="site")
    elif n_sites * min_size > len(labels):
        raise MedFedError(f"partition.sites: {n_sites} sites need {n_sites * min_size} rows "
                          f"(min_site_size {min_size}) but the data has {len(labels)}")
    elif scheme == "iid":
        partitioner = IidPartitioner(num_partitions=n_sites)
    elif scheme == "dirichlet":
        partitioner = DirichletPartitioner(num_partitions=n_sites, partition_by="label",
                                           alpha=alpha, min_partition_size=min_size,
                                           seed=derive_seed(seed, "partition", "dirichlet"))
    elif scheme == "quantity":
        partitioner = SizePartitioner(quantity_sizes(len(labels), n_sites, alpha, min_size, seed))
    else:
        raise MedFedError(f"partition.scheme: unknown {scheme!r}; use iid, dirichlet, quantity "
                          "or natural")
    partitioner.dataset = _hf_table(labels, groups, seed)
    try:
        parts = [np.sort(np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64))
                 for i in range(partitioner.num_partitions)]
    except ValueError as exc:  # e.g. Dirichlet could not meet min_partition_size
        raise MedFedError(f"partition: {exc} (try a larger partition.alpha or fewer "
                          "partition.sites)") from None
    if scheme == "natural":
        names = [str(partitioner.partition_id_to_natural_id[i]) for i in range(len(parts))]
    else:
        names = [f"site-{i + 1}" for i in range(len(parts))]
    return list(zip(names, parts, strict=True))
