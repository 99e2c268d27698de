"""Same config, same seed, same result (issue 19).

Every draw comes from a stream derived from (seed, site, round, purpose) (``medfed.seeds``):
no code reads a global generator, the order in which sites train does not matter, the Ray
engine gives what the in-process engine gives, every shipped config reruns to the same
metrics and model bytes, and demo data reruns to the same files.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medfed.seeds import derive_seed
from tests.conftest import ROOT, run_cli, small_config

PACKAGE = ROOT / "medfed"
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
# only medfed.seeds may touch the global generators: it seeds them for a block and restores them
GLOBAL_SEEDERS = {"seed", "manual_seed", "get_state", "set_state", "getstate", "setstate"}
NUMPY_OWN_GENERATORS = {"default_rng", "Generator", "SeedSequence", "PCG64", "PCG64DXSM",
                        "Philox", "SFC64", "MT19937", "BitGenerator", "RandomState"}
TORCH_DRAWS = {"rand", "randn", "randint", "randperm", "bernoulli", "normal", "multinomial",
               "poisson", "rand_like", "randn_like", "randint_like"}
TENSOR_DRAWS = {"uniform_", "normal_", "bernoulli_", "random_", "exponential_", "geometric_",
                "cauchy_", "log_normal_"}
SKLEARN_DRAWS = {"train_test_split", "ShuffleSplit", "StratifiedShuffleSplit",
                 "GroupShuffleSplit"}


def dotted(node: ast.AST) -> str:
    """``np.random.rand`` -> "np.random.rand" (empty for anything but names and attributes)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = dotted(node.value)
        return f"{head}.{node.attr}" if head else ""
    return ""


def global_draw(call: ast.Call, demo: bool = False) -> str | None:
    """Why ``call`` reads a global generator, else None. A generator of its own from fresh OS
    entropy (``np.random.default_rng()``: DP noise at a real site) is allowed; in demo-data
    code (``demo``) random UIDs are not."""
    name = dotted(call.func)
    parts = name.split(".")
    keywords = {k.arg for k in call.keywords}
    if parts[:2] in (["np", "random"], ["numpy", "random"]) and len(parts) == 3 \
            and parts[2] not in NUMPY_OWN_GENERATORS:
        return "numpy's global generator"
    if parts[0] == "random" and len(parts) == 2 and (parts[1] != "Random" or not call.args):
        return "Python's global generator"
    if parts[0] == "torch" and parts[-1] in TORCH_DRAWS and "generator" not in keywords:
        return "torch's global generator"
    if parts[0] == "torch" and parts[-1] in GLOBAL_SEEDERS | {"fork_rng", "initial_seed"}:
        return "torch's global generator"
    if isinstance(call.func, ast.Attribute) and call.func.attr in TENSOR_DRAWS \
            and "generator" not in keywords:
        return "torch's global generator"
    if parts[-1] in SKLEARN_DRAWS and "random_state" not in keywords:
        return "numpy's global generator (no random_state)"
    if demo and parts[-1] == "generate_uid" and "entropy_srcs" not in keywords:
        return "a random UID in demo data (derive it from the seed: entropy_srcs)"
    return None


def global_rng_uses(root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "seeds.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in ("random", "numpy.random"):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}: "
                             f"from {node.module} import ...")
            if isinstance(node, ast.Call) and (why := global_draw(node, "demo" in path.name)):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}: "
                             f"{dotted(node.func) or ast.unparse(node.func)}(...) reads {why}")
    return found


def test_the_scan_catches_global_draws(tmp_path):
    (tmp_path / "bad.py").write_text(
        "import random\nimport numpy as np\nimport torch\n"
        "a = np.random.rand(3)\nb = random.random()\nc = torch.randn(2)\n"
        "d = torch.rand_like(c)\ne = c.normal_()\nf = np.random.seed(3)\n"
        "g = torch.randperm(4, generator=torch.Generator())\nh = np.random.default_rng(1)\n"
        "i = random.Random('x').random()\ntorch.manual_seed(0)\nj = random.Random()\n"
        "from sklearn.model_selection import train_test_split\nk = train_test_split([1, 2])\n")
    (tmp_path / "demo.py").write_text("from pydicom.uid import generate_uid\n"
                                      "a = generate_uid()\nb = generate_uid(entropy_srcs=['1'])\n")
    found = global_rng_uses(tmp_path)
    assert [line.split(":")[0:2] for line in found] == [
        [f"{tmp_path.name}/bad.py", n] for n in ("4", "5", "6", "7", "8", "9", "13", "14", "16")
    ] + [[f"{tmp_path.name}/demo.py", "2"]]


def test_no_code_reads_a_global_generator():
    assert global_rng_uses() == []


def test_derived_seeds_are_stable_across_processes_and_separate_purposes():
    keys = (42, "site-1", 3, "train")
    other = subprocess.run([sys.executable, "-c", "from medfed.seeds import derive_seed; "
                            f"print(derive_seed{keys})"], capture_output=True, text=True,
                           cwd=ROOT, check=True).stdout
    assert int(other) == derive_seed(*keys)  # a hash, not Python's salted hash()
    seeds = {derive_seed(42, site, rnd, purpose) for site in ("site-1", "site-2")
             for rnd in (1, 2) for purpose in ("train", "split")}
    assert len(seeds) == 8 and derive_seed(43, *keys[1:]) != derive_seed(*keys)


def scramble_global_generators(value: int) -> None:
    """Leave the global generators somewhere else: a run that reads them changes."""
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)
    torch.rand(value % 7 + 1)


def digest(arrays) -> str:
    h = hashlib.sha256()
    for key, array in sorted(arrays.items()):  # a checkpoint read back lists keys sorted
        h.update(key.encode() + array.data)
    return h.hexdigest()


@pytest.fixture(scope="module")
def multimodal_data(tmp_path_factory) -> Path:
    from medfed.datasets.multimodal.demo import write_multimodal_sites

    root = tmp_path_factory.mktemp("mm")
    write_multimodal_sites(root, sites=3, patients=24, missing_image=0.3, clinical_only_sites=1,
                           size=16, seed=3)
    return root


def multimodal_config(path: Path, rounds: int = 2):
    from medfed.config import validate

    return validate({
        "dataset": {"name": "multimodal-sites", "options": {
            "path": str(path), "clinical": {"numeric": ["age", "crp"],
                                            "categorical": ["sex", "smoker"]},
            "spatial_size": [16, 16], "window": "soft_tissue"}},
        "partition": {"scheme": "natural", "sites": 3},
        "model": {"name": "multimodal", "image_shape": [1, 16, 16],
                  "encoder_options": {"channels": [4, 8]}, "modality_dropout": 0.3,
                  "dropout": 0.2},
        "strategy": {"name": "fedavg-partial", "min_sites": 3},
        "train": {"batch_size": 8, "optimizer": "adam", "lr": 0.003, "local_epochs": 1},
        "rounds": rounds, "seed": 5})


def test_site_order_does_not_matter(multimodal_data):
    """Modality dropout and nn.Dropout draw per site and round: the order sites train in, and
    whatever drew from the global generators before, change nothing."""
    from medfed.datasets.sites import simulated_federation
    from medfed.simulation.runner import run_federated

    cfg = multimodal_config(multimodal_data)
    sites, info = simulated_federation(cfg.to_json())
    results = []
    for value, order in ((1, [0, 1, 2]), (2, [2, 0, 1]), (3, [1, 2, 0])):
        scramble_global_generators(value)
        results.append(run_federated(cfg, sites, info, None, order=order))
    assert len({digest(r.arrays) for r in results}) == 1
    first = results[0].history
    for other in results[1:]:
        assert other.history == first


def test_the_round_seeds_change_what_is_drawn(multimodal_data):
    """The check above is not vacuous: another experiment seed gives other weights."""
    from medfed.datasets.sites import simulated_federation
    from medfed.simulation.runner import run_federated

    cfg = multimodal_config(multimodal_data, rounds=1)
    sites, info = simulated_federation(cfg.to_json())
    other = cfg.model_copy(update={"seed": cfg.seed + 1})
    a = run_federated(cfg, sites, info, None).arrays
    b = run_federated(other, sites, info, None).arrays
    assert digest(a) != digest(b)


def test_ray_engine_gives_the_in_process_result():
    from medfed.datasets.sites import simulated_federation
    from medfed.simulation.runner import run_federated

    cfg = small_config(rounds=2, partition={"scheme": "dirichlet", "sites": 3, "alpha": 1.0},
                       model={"name": "mlp", "hidden": [8], "dropout": 0.2})
    sites, info = simulated_federation(cfg.to_json())
    local = run_federated(cfg, sites, info, None)
    ray = run_federated(cfg.model_copy(update={"engine": "ray"}), sites, info, None)
    assert digest(ray.arrays) == digest(local.arrays)
    assert json.dumps(ray.history, sort_keys=True) == json.dumps(local.history, sort_keys=True)
    assert dict(ray.summary.scaling) == dict(local.summary.scaling)


# real files a shipped config reads (under MEDFED_DATA_DIR): skipped when absent
REAL_DATA = {"adrenal3d": "medmnist/adrenalmnist3d.npz", "medmnist-breast":
             "medmnist/breastmnist.npz", "heart-disease": "heart-disease/processed.va.data",
             "tcga-brca": "tcga-brca/brca.csv", "nifti-pyradiomics": "nifti-pyradiomics",
             "ham10000-sample": "ham10000-sample", "sepsis-physionet": "physionet2019-sample",
             "benchmark-heart-disease": "heart-disease/processed.va.data",
             "benchmark-breastmnist-shift": "medmnist/breastmnist.npz"}
FEW = ["--set", "rounds=1", "--set", "train.local_epochs=1"]
# image configs: the baselines' training is the same code as the tabular configs' (tested there)
NO_BASELINES = ["baselines.centralized=false", "baselines.local_only=false"]
FEW_ROWS = ["partition.min_site_size=2"]  # demo sites of a few patients


def small_run_overrides(name: str, tmp: Path) -> list[str]:
    """--set overrides that keep a shipped config to seconds: its own data, made small. A new
    config whose demo data is not written here fails: add it."""
    from medfed.datasets.imaging.demo import write_demo_sites

    if name == "brats-like":
        from medfed.datasets.imaging.demo_brats import write_brats_sites

        roots = write_brats_sites(tmp / "brats", 3, patients=3, size=32)
        return [f"dataset.options.roots=[{', '.join(str(r) for r in roots)}]", *FEW_ROWS,
                *NO_BASELINES]
    if name == "two-stage-classifier":
        roots = write_demo_sites(tmp / "crops", 3, "classification", "nifti", 3, patients=6,
                                 size=16)
        return [f"dataset.options.roots=[{', '.join(str(r) for r in roots)}]",
                "model.channels=[4, 8]", *FEW_ROWS, *NO_BASELINES]
    if name == "multimodal-demo":
        return [f"dataset.options.path={tmp / 'mm'}", "dataset.options.demo={sites: 4, "
                "patients: 16, missing_image: 0.3, clinical_only_sites: 1, size: 32}"]
    if name == "sepsis-demo":
        return [f"dataset.options.path={tmp / 'sepsis'}", "dataset.options.demo_patients=60"]
    if name == "sites-segmentation":
        roots = write_demo_sites(tmp / "seg", 3, "segmentation", "nifti", 3, patients=4)
        return [f"dataset.options.roots=[{', '.join(str(r) for r in roots)}]", *FEW_ROWS,
                *NO_BASELINES]
    if name == "nifti-pyradiomics":
        return ["dataset.options.spatial_size=[32, 32]", "model.channels=[4, 8, 16, 32]",
                *NO_BASELINES]
    if name in ("adrenal3d", "medmnist-breast"):
        return ["model.channels=[4]", *NO_BASELINES]
    if name == "sepsis-physionet":
        return ["dataset.options.max_stays=100"]
    return []


def rerun_figures(report: dict) -> dict:
    """What must not change between two runs (timings and paths may)."""
    return {k: report[k] for k in ("metrics", "history", "multimodal", "task_report")
            if k in report}


def assert_close(a, b, where: str = "report") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), where
        for key in a:
            assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and not (np.isnan(a) and np.isnan(b)):
        assert abs(a - b) <= 1e-9, f"{where}: {a} != {b}"
    elif not (isinstance(a, float) and isinstance(b, float)):
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_shipped_config_reruns_to_the_same_numbers(config, tmp_path, monkeypatch, capsys):
    import os

    name = config.stem
    if name in REAL_DATA:
        root = os.environ.get("MEDFED_DATA_DIR")
        if not root or not Path(root, REAL_DATA[name]).exists():
            pytest.skip(f"{name}: its real data ($MEDFED_DATA_DIR/{REAL_DATA[name]}) is absent")
    overrides = FEW + [arg for o in small_run_overrides(name, tmp_path) for arg in ("--set", o)]
    monkeypatch.chdir(tmp_path)
    runs = []
    for i in (1, 2):
        scramble_global_generators(i)
        out = tmp_path / f"run{i}"
        code, stdout, err = run_cli(["simulate", str(config), "--out", str(out), "--no-track",
                                     "--json", *overrides], monkeypatch, capsys)
        assert code == 0, err
        model = hashlib.sha256((out / "global_model.safetensors").read_bytes()).hexdigest()
        runs.append((json.loads(stdout), model))
    (first, model1), (second, model2) = runs
    assert model1 == model2
    assert first["reproducibility"] == second["reproducibility"]
    assert first["reproducibility"]["deterministic"]  # CPU
    assert_close(rerun_figures(first), rerun_figures(second))


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("args", [
    ["imaging", "--sites", "2", "--task", "segmentation", "--format", "dicom", "--patients", "2",
     "--size", "16"],
    ["imaging", "--sites", "2", "--format", "dicom", "--dims", "2", "--patients", "3"],
    ["multimodal", "--sites", "2", "--patients", "6", "--clinical-only-sites", "1"],
    ["sepsis", "--sites", "2", "--patients", "5"],
], ids=["dicom-seg", "dicom-2d", "multimodal", "sepsis"])
def test_demo_data_twice_with_one_seed_gives_the_same_bytes(args, tmp_path, monkeypatch, capsys):
    trees = []
    for i, seed in ((1, 0), (2, 0), (3, 1)):
        scramble_global_generators(i)
        out = tmp_path / f"demo{i}"
        code, _, err = run_cli(["demo-data", args[0], str(out), *args[1:], "--seed", str(seed)],
                               monkeypatch, capsys)
        assert code == 0, err
        trees.append(tree_digest(out))
    assert trees[0] and trees[0] == trees[1]  # names and bytes
    assert trees[2] != trees[0]  # another seed, other data
