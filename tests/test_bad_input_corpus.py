"""Bad input never crashes, never slips through, never leaves half a file (issue 14).

A corpus of broken inputs, generated at test time, one case per (command, kind of damage).
Every case runs `medfed` in this process and must: exit 2, print ONE line
``error: WHAT (WHERE): FIX`` naming the file or key, no traceback, write nothing (the work
folder is byte-identical afterwards, so inputs are unchanged and no partial output exists).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli

LINE = re.compile(r"^error: .+ \(([^()]+)\): \S.*$")


@dataclass(frozen=True)
class Case:
    family: str
    name: str
    build: Callable[[Path, Path], list[str]]  # (work dir, shared fixtures) -> argv
    where: str  # must appear in the error line ({work} = the work dir)
    expect: str = ""  # must appear in stdout + stderr (e.g. the problem data check lists)


CASES: list[Case] = []


def case(family: str, name: str, where: str, expect: str = ""):
    def register(build: Callable[[Path, Path], list[str]]):
        CASES.append(Case(family, name, build, where, expect))
        return build
    return register


# --- helpers that write inputs ----------------------------------------------------------------


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def read_only(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    return folder


def nifti_bytes(array: np.ndarray, affine: np.ndarray | None = None) -> bytes:
    """A .nii.gz; ``affine`` goes into the header's sform as is (even a degenerate one)."""
    import nibabel as nib

    if affine is None:
        return gzip.compress(nib.Nifti1Image(array, np.eye(4)).to_bytes(), mtime=0)
    header = nib.Nifti1Header()
    header.set_data_shape(array.shape)
    header.set_data_dtype(array.dtype)
    header.set_sform(affine, code=1)
    header.set_qform(None, code=0)
    return gzip.compress(nib.Nifti1Image(array, None, header=header).to_bytes(), mtime=0)


def nifti_site(work: Path, image: bytes, mask: bytes | None = None) -> Path:
    """A one-row NIfTI site folder (a second, clean row keeps the folder otherwise valid)."""
    site = work / "site"
    clean = np.random.default_rng(0).normal(size=(16, 16, 8)).astype(np.float32)
    write(site / "p1" / "image.nii.gz", image)
    write(site / "p2" / "image.nii.gz", nifti_bytes(clean))
    if mask is None:
        write(site / "manifest.csv", "patient_id,image,label\np1,p1/image.nii.gz,1\n"
                                     "p2,p2/image.nii.gz,0\n")
    else:
        write(site / "p1" / "mask.nii.gz", mask)
        write(site / "manifest.csv", "patient_id,image,mask\np1,p1/image.nii.gz,p1/mask.nii.gz\n")
    return site


def noisy(shape=(16, 16, 8)) -> np.ndarray:
    return np.random.default_rng(1).normal(size=shape).astype(np.float32)


def dicom_site(work: Path, shared: Path) -> Path:
    site = work / "site"
    shutil.copytree(shared / "dicom" / "site-1", site)
    return site


def series_files(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("*.dcm") if p.parent.name == "series")


def edit_slice(path: Path, **tags) -> None:
    """Set header values on one slice; a ``bytes`` value is written raw, unvalidated (the
    point is a broken value pydicom itself would refuse to set)."""
    import pydicom
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement

    ds = pydicom.dcmread(path)
    for keyword, value in tags.items():
        if isinstance(value, bytes):
            tag = tag_for_keyword(keyword)
            ds._dict[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0,
                                           False, True)
        else:
            ds.data_element(keyword).value = value
    ds.save_as(path)


CSV_ROWS = 60


def clinical_csv(work: Path, crp: Callable[[int], str] | None = None,
                 empty_column: bool = False) -> Path:
    rng = np.random.default_rng(2)
    lines = ["age,crp,sodium,notes,label" if empty_column else "age,crp,sodium,label"]
    for i in range(CSV_ROWS):
        value = crp(i) if crp else f"{rng.gamma(2, 10):.1f}"
        cells = [str(int(rng.integers(30, 90))), value, f"{rng.normal(140, 3):.1f}"]
        lines.append(",".join([*cells, *([""] if empty_column else []), str(i % 2)]))
    return write(work / "data.csv", "\n".join(lines) + "\n")


def csv_config(work: Path, path: str = "data.csv") -> Path:
    return write(work / "csv.yaml", "dataset:\n  name: csv\n  options:\n"
                 f"    path: {path}\n    label: label\npartition:\n  sites: 2\n"
                 "model:\n  name: logreg\nrounds: 1\nbaselines:\n  centralized: false\n"
                 "  local_only: false\n")


def simulate(config: Path, *extra: str) -> list[str]:
    return ["simulate", str(config), "--no-track", "--out", "out", *extra]


def state_with_run(work: Path, run: str = "r1") -> Path:
    """A coordinator state folder (insecure) with one unfinished run."""
    from medfed.config import validate

    state = work / "state"
    write(state / "server.json", json.dumps({"address": "127.0.0.1:9", "insecure": True}))
    cfg = validate({"rounds": 3, "model": {"name": "logreg"}})
    write(state / "runs" / run / "config.json", cfg.to_json())
    return state


def round_checkpoint(metadata: dict[str, str] | None, arrays: dict | None = None) -> bytes:
    from safetensors.numpy import save

    return save(arrays or {"global/w": np.zeros(3, np.float32)}, metadata=metadata)


GOOD_META = {"round": "1", "order": json.dumps(["w"]), "kinds": "{}", "history": "[]",
             "summary": json.dumps({"task": "binary", "input_shape": [3], "n_classes": 2,
                                    "n_train": 10})}


def node_key(work: Path) -> Path:
    from medfed.deploy.certs import create_node_keys

    return create_node_keys(work / "keys")["public"]


def model_dir(work: Path, signature: bytes | str) -> Path:
    folder = work / "model"
    write(folder / "model.safetensors", b"weights")
    write(folder / "model_card.json", "{}")
    write(folder / "signature.json", signature)
    return folder


def ledger(work: Path, rows: list, site: str = "site-1") -> Path:
    from medfed.privacy.ledger import FORMAT, checksum

    folder = work / "privacy"
    write(folder / f"{site}.json", json.dumps({"format": FORMAT, "site": site, "updated": 0,
                                               "spends": rows, "sha256": checksum(rows)}))
    return folder


SPEND = {"run_id": "r", "round": 1, "steps": 10, "sample_rate": 0.1, "noise_multiplier": 1.1,
         "max_grad_norm": 1.0, "epsilon_after": 0.5, "delta": 1e-5, "accountant": "rdp",
         "grad_sample_mode": "hooks", "time": 0.0}


# --- family: config ---------------------------------------------------------------------------

CONFIG_CASES = [  # (name, YAML, key the message must name, a word of the fix)
    ("unknown-top-key", "roundz: 3\n", "roundz", "did you mean 'rounds'"),
    ("unknown-section-key", "partition:\n  sitez: 3\n", "partition.sitez", "'sites'"),
    ("unknown-train-key", "train:\n  lrr: 0.1\n", "train.lrr", "'lr'"),
    ("unknown-baseline-key", "baselines:\n  centralised: true\n", "baselines.centralised",
     "'centralized'"),
    ("hidden-not-int", "model:\n  name: mlp\n  hidden: [a]\n", "model.hidden[0]", "whole"),
    ("hidden-negative", "model:\n  name: mlp\n  hidden: [-5]\n", "model.hidden[0]", "above 0"),
    ("hidden-not-list", "model:\n  name: mlp\n  hidden: abc\n", "model.hidden", "list"),
    ("dropout-above-1", "model:\n  name: mlp\n  dropout: 1.5\n", "model.dropout", "below 1"),
    ("model-option-typo", "model:\n  name: mlp\n  hiden: [8]\n", "model.hiden", "'hidden'"),
    ("gru-hidden-list", "model:\n  name: gru\n  hidden: [8]\n", "model.hidden", "whole"),
    ("cnn-channels-zero", "model:\n  name: small_cnn\n  channels: [16, 0]\n",
     "model.channels[1]", "above 0"),
    ("cnn-norm", "model:\n  name: small_cnn\n  norm: layer\n", "model.norm", "'batch'"),
    ("strategy-option-type", "strategy:\n  name: fedadam\n  eta: fast\n", "strategy.eta",
     "number"),
    ("strategy-negative-mu", "strategy:\n  name: fedprox\n  proximal_mu: -1\n",
     "strategy.proximal_mu", "at least 0"),
    ("strategy-int-option", "strategy:\n  name: krum\n  num_malicious_nodes: 1.5\n",
     "strategy.num_malicious_nodes", "whole"),
    ("strategy-unknown-option", "strategy:\n  name: fedadam\n  etta: 0.1\n", "strategy.etta",
     "'eta'"),
    ("strategy-beta-range", "strategy:\n  name: fedtrimmedavg\n  beta: 0.7\n", "strategy.beta",
     "below 0.5"),
    ("strategy-fraction", "strategy:\n  fraction_train: 0\n", "strategy.fraction_train",
     "above 0"),
    ("spatial-size-letter", "dataset:\n  name: site-folders\n  options:\n"
     "    spatial_size: [b, 32]\n", "dataset.options.spatial_size[0]", "whole"),
    ("spatial-size-zero", "dataset:\n  name: site-folders\n  options:\n"
     "    spatial_size: [0, 32]\n", "dataset.options.spatial_size[0]", "above 0"),
    ("spatial-size-scalar", "dataset:\n  name: site-folders\n  options:\n"
     "    spatial_size: 32\n", "dataset.options.spatial_size", "list"),
    ("spatial-size-4d", "dataset:\n  name: site-folders\n  options:\n"
     "    spatial_size: [8, 8, 8, 8]\n", "dataset.options.spatial_size", "at most 3"),
    ("dataset-test-fraction", "dataset:\n  name: site-folders\n  options:\n"
     "    test_fraction: 1.0\n", "dataset.options.test_fraction", "below 1"),
    ("rounds-zero", "rounds: 0\n", "rounds", "at least 1"),
    ("rounds-word", "rounds: ten\n", "rounds", "whole"),
    ("sites-zero", "partition:\n  sites: 0\n", "partition.sites", "at least 1"),
    ("test-fraction", "partition:\n  test_fraction: 1.5\n", "partition.test_fraction",
     "below 1"),
    ("scheme", "partition:\n  scheme: random\n", "partition.scheme", "'iid'"),
    ("batch-negative", "train:\n  batch_size: -1\n", "train.batch_size", "at least 1"),
    ("lr-zero", "train:\n  lr: 0\n", "train.lr", "above 0"),
    ("optimizer", "train:\n  optimizer: sgdd\n", "train.optimizer", "'sgd'"),
    ("augment", "train:\n  augment: [flipp]\n", "train.augment[0]", "'flip'"),
    ("epsilon-negative", "privacy:\n  epsilon: -1\n", "privacy.epsilon", "above 0"),
    ("delta-two", "privacy:\n  delta: 2\n", "privacy.delta", "below 1"),
    ("privacy-mode", "privacy:\n  mode: dp\n", "privacy.mode", "'dp-sgd'"),
    ("engine", "engine: rey\n", "engine", "'ray'"),
    ("evaluate-every", "evaluate_every: 0\n", "evaluate_every", "at least 1"),
    ("seed-word", "seed: abc\n", "seed", "whole"),
    ("amp-word", "train:\n  amp: maybe\n", "train.amp", "true or false"),
    ("section-scalar", "dataset: 5\n", "dataset", "mapping"),
]


def _config_case(name: str, yaml_text: str, key: str, fix: str) -> None:
    @case("config", name, f"{{work}}/c.yaml: {key}", fix)
    def build(work: Path, shared: Path) -> list[str]:
        return simulate(write(work / "c.yaml", yaml_text))


for _args in CONFIG_CASES:
    _config_case(*_args)


@case("config", "top-level-list", "{work}/c.yaml", "mapping")
def _(work, shared):
    return simulate(write(work / "c.yaml", "- rounds\n- 3\n"))


@case("config", "yaml-syntax", "{work}/c.yaml line", "syntax")
def _(work, shared):
    return simulate(write(work / "c.yaml", "rounds: [3\nseed: 1\n"))


@case("config", "not-utf8", "{work}/c.yaml", "UTF-8")
def _(work, shared):
    return simulate(write(work / "c.yaml", "name: caf\xe9 study\n".encode("latin-1")))


@case("config", "missing-file", "{work}/nope.yaml", "configs/")
def _(work, shared):
    return simulate(work / "nope.yaml")


@case("config", "folder-not-file", "{work}/cfgdir", "YAML file")
def _(work, shared):
    (work / "cfgdir").mkdir()
    return simulate(work / "cfgdir")


@case("config", "set-without-equals", "--set 'rounds'", "KEY=VALUE")
def _(work, shared):
    return simulate(write(work / "c.yaml", "rounds: 2\n"), "--set", "rounds")


@case("config", "set-into-value", "--set 'rounds.x=1'", "--set rounds=VALUE")
def _(work, shared):
    return simulate(write(work / "c.yaml", "rounds: 2\n"), "--set", "rounds.x=1")


@case("config", "set-bad-value", "c.yaml: rounds", "whole")
def _(work, shared):
    return simulate(write(work / "c.yaml", "rounds: 2\n"), "--set", "rounds=abc")


@case("config", "privacy-plan-unknown-key", "c.yaml: roundz", "'rounds'")
def _(work, shared):
    return ["privacy", "plan", str(write(work / "c.yaml", "roundz: 2\n"))]


# --- family: command options and output paths ---------------------------------------------------

def _ok_config(work: Path) -> Path:
    return write(work / "ok.yaml", "dataset:\n  name: breast-cancer\nmodel:\n  name: logreg\n"
                                   "rounds: 1\n")


@case("cli", "simulate-out-is-file", "--out out", "folder path")
def _(work, shared):
    write(work / "out", "not a folder")
    return simulate(_ok_config(work))


@case("cli", "simulate-out-under-file", "--out {work}/afile/out", "folders")
def _(work, shared):
    write(work / "afile", "x")
    return ["simulate", str(_ok_config(work)), "--no-track", "--out", str(work / "afile/out")]


@case("cli", "simulate-out-read-only", "--out {work}/ro/out", "writable")
def _(work, shared):
    read_only(work / "ro")
    return ["simulate", str(_ok_config(work)), "--no-track", "--out", str(work / "ro/out")]


@case("cli", "simulate-unknown-option", "medfed simulate", "--help")
def _(work, shared):
    return ["simulate", str(_ok_config(work)), "--roundz", "3"]


@case("cli", "certs-folder-is-file", "FOLDER {work}/certs", "folder path")
def _(work, shared):
    write(work / "certs", "x")
    return ["certs", "init", str(work / "certs"), "--server-name", "fl.example.org"]


@case("cli", "certs-folder-read-only", "FOLDER {work}/ro/certs", "writable")
def _(work, shared):
    read_only(work / "ro")
    return ["certs", "init", str(work / "ro/certs"), "--server-name", "fl.example.org"]


@case("cli", "certs-days-zero", "medfed certs init", "--help")
def _(work, shared):
    return ["certs", "init", str(work / "certs"), "--server-name", "a", "--days", "0"]


@case("cli", "certs-days-negative", "medfed certs init", "--help")
def _(work, shared):
    return ["certs", "init", str(work / "certs"), "--server-name", "a", "--days", "-5"]


@case("cli", "certs-existing-ca", "{work}/certs/ca.pem", "empty folder")
def _(work, shared):
    write(work / "certs" / "ca.pem", "existing CA")
    return ["certs", "init", str(work / "certs"), "--server-name", "a"]


@case("cli", "keys-folder-is-file", "FOLDER {work}/keys", "folder path")
def _(work, shared):
    write(work / "keys", "x")
    return ["keys", "create", str(work / "keys")]


@case("cli", "keys-folder-read-only", "FOLDER {work}/ro/keys", "writable")
def _(work, shared):
    read_only(work / "ro")
    return ["keys", "create", str(work / "ro/keys")]


@case("cli", "keys-existing", "{work}/keys/node.key", "another folder")
def _(work, shared):
    write(work / "keys" / "node.key", "existing key")
    return ["keys", "create", str(work / "keys")]


@case("cli", "inspect-out-is-folder", "--out {work}/pngdir", "file name")
def _(work, shared):
    (work / "pngdir").mkdir()
    return ["data", "inspect", str(nifti_site(work, nifti_bytes(noisy()))), "--out",
            str(work / "pngdir")]


@case("cli", "inspect-out-read-only", "--out {work}/ro/m.png", "writable")
def _(work, shared):
    read_only(work / "ro")
    return ["data", "inspect", str(nifti_site(work, nifti_bytes(noisy()))), "--out",
            str(work / "ro/m.png")]


@case("cli", "inspect-out-under-file", "--out {work}/afile/m.png", "folders")
def _(work, shared):
    write(work / "afile", "x")
    return ["data", "inspect", str(nifti_site(work, nifti_bytes(noisy()))), "--out",
            str(work / "afile/m.png")]


@case("cli", "inspect-samples-zero", "medfed data inspect", "--help")
def _(work, shared):
    return ["data", "inspect", str(work), "--samples", "0"]


for _name, _args in [("patients-zero", ["--patients", "0"]),
                     ("patients-negative", ["--patients", "-3"]),
                     ("sites-zero", ["--sites", "0"]), ("dims-four", ["--dims", "4"]),
                     ("size-zero", ["--size", "0"])]:
    def _demo_option(args=_args, name=_name):
        @case("cli", f"demo-imaging-{name}", "medfed demo-data imaging", "--help")
        def build(work, shared):
            return ["demo-data", "imaging", str(work / "demo"), *args]
    _demo_option()


@case("cli", "demo-imaging-task", "--task", "")
def _(work, shared):
    return ["demo-data", "imaging", str(work / "demo"), "--task", "detection", "--sites", "1",
            "--patients", "1"]


@case("cli", "demo-imaging-format", "--format", "")
def _(work, shared):
    return ["demo-data", "imaging", str(work / "demo"), "--format", "png", "--sites", "1",
            "--patients", "1"]


@case("cli", "demo-out-is-file", "OUT {work}/demo", "folder path")
def _(work, shared):
    write(work / "demo", "x")
    return ["demo-data", "imaging", str(work / "demo"), "--sites", "1", "--patients", "2"]


@case("cli", "demo-out-read-only", "OUT {work}/ro/demo", "writable")
def _(work, shared):
    read_only(work / "ro")
    return ["demo-data", "sepsis", str(work / "ro/demo"), "--sites", "1", "--patients", "2"]


@case("cli", "demo-refused-leaves-nothing", "OUT {work}/demo", "nothing is overwritten")
def _(work, shared):
    """site-2 exists: site-1 (written first) must not be left behind either."""
    write(work / "demo" / "site-2" / "manifest.csv", "patient_id,image,label\n")
    return ["demo-data", "imaging", str(work / "demo"), "--sites", "2", "--patients", "2",
            "--format", "nifti", "--size", "16"]


for _name, _args in [("patients-zero", ["--patients", "0"]), ("sites-zero", ["--sites", "0"]),
                     ("share-two", ["--septic-share", "2"])]:
    def _sepsis_option(args=_args, name=_name):
        @case("cli", f"demo-sepsis-{name}", "medfed demo-data sepsis", "--help")
        def build(work, shared):
            return ["demo-data", "sepsis", str(work / "demo"), *args]
    _sepsis_option()


@case("cli", "demo-multimodal-patients", "medfed demo-data multimodal", "--help")
def _(work, shared):
    return ["demo-data", "multimodal", str(work / "demo"), "--patients", "-1"]


for _name, _args in [("delta-zero", ["--delta", "0"]), ("delta-two", ["--delta", "2"]),
                     ("budget-negative", ["--budget", "-1"]),
                     ("accountant", ["--accountant", "gdp"])]:
    def _report_option(args=_args, name=_name):
        @case("cli", f"privacy-report-{name}", args[0], "")
        def build(work, shared):
            return ["privacy", "report", "--ledger", str(ledger(work, [SPEND])), *args]
    _report_option()


@case("cli", "privacy-report-no-folder", "{work}/nowhere", "--ledger")
def _(work, shared):
    return ["privacy", "report", "--ledger", str(work / "nowhere")]


@case("cli", "privacy-plan-delta", "--delta", "1e-5")
def _(work, shared):
    return ["privacy", "plan", str(_ok_config(work)), "--delta", "2"]


@case("cli", "privacy-plan-epsilon", "--epsilon", "")
def _(work, shared):
    return ["privacy", "plan", str(_ok_config(work)), "--epsilon", "0"]


@case("cli", "audit-missing-log", "{work}/audit.jsonl", "state folder")
def _(work, shared):
    return ["audit", "verify", str(work / "audit.jsonl")]


@case("cli", "model-verify-missing", "{work}/model/model.safetensors", "download")
def _(work, shared):
    (work / "model").mkdir()
    return ["model", "verify", str(work / "model")]


@case("cli", "run-unknown-resume", "{work}/state/runs/nope", "state/runs")
def _(work, shared):
    state = state_with_run(work)
    return ["run", "--resume", "nope", "--state", str(state), "--no-track"]


@case("cli", "model-download-out-is-file", "--out {work}/m", "folder path")
def _(work, shared):
    write(work / "m", "x")
    return ["model", "download", "medfed-x", "--out", str(work / "m")]


@case("cli", "model-download-out-not-empty", "--out {work}/m", "nothing is overwritten")
def _(work, shared):
    write(work / "m" / "model.safetensors", "old")
    return ["model", "download", "medfed-x", "--out", str(work / "m")]


@case("cli", "server-start-no-certs", "server start --certs", "--insecure")
def _(work, shared):
    return ["server", "start", "--state", str(work / "state"), "--address", "127.0.0.1:1"]


@case("cli", "server-start-certs-missing", "{work}/certs/ca.pem", "certs init")
def _(work, shared):
    (work / "certs").mkdir()
    return ["server", "start", "--certs", str(work / "certs"), "--state", str(work / "state"),
            "--address", "127.0.0.1:1"]


@case("cli", "nodes-add-no-server", "{work}/state/server.json", "server start")
def _(work, shared):
    return ["nodes", "add", str(node_key(work)), "--name", "h1", "--state", str(work / "state")]


# --- family: site files -------------------------------------------------------------------------

def _corrupt_gz(data: bytes) -> bytes:
    """64 bytes flipped in the middle of the deflate stream; same length."""
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + data[middle + 64:]


@case("site", "nifti-bad-deflate", "{work}/site", "p1/image.nii.gz: corrupt compressed")
def _(work, shared):
    return ["data", "check", str(nifti_site(work, _corrupt_gz(nifti_bytes(noisy()))))]


@case("site", "nifti-bad-stored-block", "{work}/site", "p1/image.nii.gz: corrupt compressed")
def _(work, shared):
    """Stored deflate blocks: nibabel alone decodes the flipped bytes as wrong voxels, silently
    (only the gzip CRC at the end of the stream tells)."""
    import nibabel as nib

    packer = zlib.compressobj(0, zlib.DEFLATED, 31)  # level 0, gzip container
    stored = packer.compress(nib.Nifti1Image(noisy(), np.eye(4)).to_bytes()) + packer.flush()
    return ["data", "check", str(nifti_site(work, _corrupt_gz(stored)))]


@case("site", "nifti-nan-voxels", "{work}/site", "NaN")
def _(work, shared):
    array = noisy()
    array[3, 4, 5] = np.nan
    return ["data", "check", str(nifti_site(work, nifti_bytes(array)))]


@case("site", "nifti-inf-voxels", "{work}/site", "NaN/infinite")
def _(work, shared):
    array = noisy()
    array[0, 0, 0] = np.inf
    return ["data", "check", str(nifti_site(work, nifti_bytes(array)))]


@case("site", "float-mask-nan", "{work}/site", "p1/mask.nii.gz")
def _(work, shared):
    mask = np.zeros((16, 16, 8), np.float32)
    mask[4:8, 4:8, 2:4] = 1.0
    mask[0, 0, 0] = np.nan
    return ["data", "check", str(nifti_site(work, nifti_bytes(noisy()), nifti_bytes(mask)))]


@case("site", "nifti-zero-affine-column", "{work}/site", "degenerate")
def _(work, shared):
    affine = np.diag([1.0, 1.0, 0.0, 1.0])
    return ["data", "check", str(nifti_site(work, nifti_bytes(noisy(), affine)))]


@case("site", "nifti-nan-simulate-refused", "manifest row 1", "unreadable image")
def _(work, shared):
    """NaN voxels never reach training: the simulation refuses the site."""
    array = noisy()
    array[1, 1, 1] = np.nan
    site = nifti_site(work, nifti_bytes(array))
    other = shutil.copytree(site, work / "site2")
    config = write(work / "img.yaml", f"dataset:\n  name: site-folders\n  options:\n"
                   f"    roots: [{site}, {other}]\n    spatial_size: [8, 8, 4]\n"
                   f"    cache_dir: {work / 'cache'}\nmodel:\n  name: small_cnn\nrounds: 1\n")
    (work / "cache").mkdir()
    return simulate(config)


@case("site", "dicom-sagittal-slice", "{work}/site", "ImageOrientationPatient")
def _(work, shared):
    site = dicom_site(work, shared)
    files = series_files(site)
    edit_slice(files[len(files) // 2], ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    return ["data", "check", str(site)]


@case("site", "dicom-slice-spacing", "{work}/site", "PixelSpacing")
def _(work, shared):
    site = dicom_site(work, shared)
    files = series_files(site)
    edit_slice(files[len(files) // 2], PixelSpacing=[0.5, 0.5])
    return ["data", "check", str(site)]


@case("site", "dicom-rescale-abc", "{work}/site", "RescaleSlope")
def _(work, shared):
    site = dicom_site(work, shared)
    edit_slice(series_files(site)[0], RescaleSlope=b"abc ")
    return ["data", "check", str(site)]


@case("site", "dicom-pixel-spacing-zero", "{work}/site", "PixelSpacing")
def _(work, shared):
    site = dicom_site(work, shared)
    for path in series_files(site):
        edit_slice(path, PixelSpacing=[0, 0])
    return ["data", "check", str(site)]


@case("site", "dicom-intercept-text", "{work}/site", "RescaleIntercept is not numeric")
def _(work, shared):
    site = dicom_site(work, shared)
    edit_slice(series_files(site)[1], RescaleIntercept=b"-1024 HU ")
    return ["data", "check", str(site)]


@case("site", "dicom-orientation-parallel", "{work}/site", "parallel or zero")
def _(work, shared):
    site = dicom_site(work, shared)
    for path in series_files(site):
        edit_slice(path, ImageOrientationPatient=[1, 0, 0, 1, 0, 0])
    return ["data", "check", str(site)]


@case("site", "dicom-position-text", "{work}/site", "ImagePositionPatient")
def _(work, shared):
    site = dicom_site(work, shared)
    edit_slice(series_files(site)[2], ImagePositionPatient=b"0\\0\\x ")
    return ["data", "check", str(site)]


@case("site", "dicom-slice-of-other-size", "{work}/site", "different sizes")
def _(work, shared):
    import pydicom

    site = dicom_site(work, shared)
    path = series_files(site)[3]
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 8, 8
    ds.PixelData = np.zeros((8, 8), np.uint16).tobytes()
    ds.save_as(path)
    return ["data", "check", str(site)]


@case("site", "dicom-seg-unknown-sop", "{work}/site", "not in this image")
def _(work, shared):
    import pydicom

    site = dicom_site(work, shared)
    seg_path = next(site.rglob("seg.dcm"))
    ds = pydicom.dcmread(seg_path)
    frame = ds.PerFrameFunctionalGroupsSequence[0]
    frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID = \
        "1.2.826.0.1.3680043.8.498.999999"
    ds.save_as(seg_path)
    return ["data", "check", str(site)]


@case("site", "inspect-empty-series-folder", "{work}/site", "no readable image")
def _(work, shared):
    site = work / "site"
    (site / "p1" / "series").mkdir(parents=True)
    write(site / "manifest.csv", "patient_id,image,label\np1,p1/series,1\n")
    return ["data", "inspect", str(site), "--out", str(work / "m.png")]


@case("site", "inspect-text-named-dcm", "{work}/site", "no readable image")
def _(work, shared):
    site = work / "site"
    write(site / "p1" / "scan.dcm", "this is a radiology report, not an image\n")
    write(site / "manifest.csv", "patient_id,image,label\np1,p1/scan.dcm,1\n")
    return ["data", "inspect", str(site), "--out", str(work / "m.png")]


@case("site", "check-text-named-dcm", "{work}/site", "p1/scan.dcm: cannot decode")
def _(work, shared):
    site = work / "site"
    write(site / "p1" / "scan.dcm", "this is a radiology report, not an image\n")
    write(site / "manifest.csv", "patient_id,image,label\np1,p1/scan.dcm,1\n")
    return ["data", "check", str(site)]


@case("site", "manifest-parent-path", "{work}/site/manifest.csv row 1", "allowed_roots")
def _(work, shared):
    write(work / "elsewhere" / "P" / "image.nii.gz", nifti_bytes(noisy()))
    site = work / "site"
    write(site / "manifest.csv", "patient_id,image,label\nP,../elsewhere/P/image.nii.gz,1\n")
    return ["data", "check", str(site)]


@case("site", "manifest-absolute-path", "{work}/site/manifest.csv row 1", "site folder")
def _(work, shared):
    outside = write(work / "elsewhere" / "image.nii.gz", nifti_bytes(noisy()))
    write(work / "site" / "manifest.csv", f"patient_id,image,label\nP,{outside},1\n")
    return ["data", "check", str(work / "site")]


@case("site", "manifest-symlink-out", "{work}/site/manifest.csv row 1", "site folder")
def _(work, shared):
    outside = write(work / "elsewhere" / "image.nii.gz", nifti_bytes(noisy()))
    (work / "site").mkdir()
    (work / "site" / "link.nii.gz").symlink_to(outside)
    write(work / "site" / "manifest.csv", "patient_id,image,label\nP,link.nii.gz,1\n")
    return ["data", "check", str(work / "site")]


@case("site", "manifest-mask-outside", "{work}/site/manifest.csv row 1", "site folder")
def _(work, shared):
    site = nifti_site(work, nifti_bytes(noisy()))
    write(work / "mask.nii.gz", nifti_bytes(np.zeros((16, 16, 8), np.float32)))
    write(site / "manifest.csv", "patient_id,image,mask\np1,p1/image.nii.gz,../mask.nii.gz\n")
    return ["data", "check", str(site)]


@case("site", "manifest-header-only", "{work}/site/manifest.csv", "one row per sample")
def _(work, shared):
    write(work / "site" / "manifest.csv", "patient_id,image,label\n")
    return ["data", "check", str(work / "site")]


@case("site", "manifest-header-only-inspect", "{work}/site/manifest.csv", "one row")
def _(work, shared):
    write(work / "site" / "manifest.csv", "patient_id,image,label\n")
    return ["data", "inspect", str(work / "site"), "--out", str(work / "m.png")]


@case("site", "site-folder-missing", "{work}/nosite", "")
def _(work, shared):
    return ["data", "check", str(work / "nosite")]


@case("site", "csv-empty-column", "(data.csv)", "notes")
def _(work, shared):
    clinical_csv(work, empty_column=True)
    return simulate(csv_config(work))


def _lab_down(i: int) -> str:
    return {7: "n/a (lab down)", 23: "#VALUE!", 41: "n/a (lab down)"}.get(i, f"{10 + i % 9}.5")


@case("site", "csv-numeric-with-text", "(data.csv)", "row 8 'n/a (lab down)'")
def _(work, shared):
    clinical_csv(work, crp=_lab_down)
    return simulate(csv_config(work))


@case("site", "csv-numeric-value-error", "(data.csv)", "#VALUE!")
def _(work, shared):
    clinical_csv(work, crp=lambda i: "#VALUE!" if i == 5 else str(i))
    return simulate(csv_config(work))


@case("site", "csv-infinite-values", "(data.csv)", "rows 4")
def _(work, shared):
    clinical_csv(work, crp=lambda i: "inf" if i == 3 else f"{i % 7}.5")
    return simulate(csv_config(work))


@case("site", "csv-huge-sparse", "(data.csv)", "GiB limit")
def _(work, shared):
    path = write(work / "data.csv", "age,crp,label\n50,1.0,0\n60,2.0,1\n70,3.0,0\n")
    with path.open("r+b") as handle:
        handle.truncate(2 << 30)  # a hole: 2 GiB on paper, a few bytes on disk
    return simulate(csv_config(work))


@case("site", "csv-huge-sparse-check", "{work}/site/data.csv", "GiB limit")
def _(work, shared):
    path = write(work / "site" / "data.csv", "age,label\n50,0\n60,1\n")
    with path.open("r+b") as handle:
        handle.truncate(2 << 30)
    return ["data", "check", str(work / "site")]


@case("site", "csv-missing-file", "(nothere.csv)", "dataset.options.path")
def _(work, shared):
    return simulate(csv_config(work, "nothere.csv"))


# --- family: state files ------------------------------------------------------------------------

def _resume(work: Path) -> list[str]:
    return ["run", "--resume", "r1", "--state", str(work / "state"), "--no-track"]


for _name, _content, _what in [("binary", b"\x89PNG\r\n\x1a\n\x00\xff", "binary"),
                               ("not-json", "{status: running", "not valid JSON"),
                               ("list", "[\"running\"]", "not an object"),
                               ("wrong-type", json.dumps({"status": 5, "run_id": "r1"}),
                                "'status'")]:
    def _status_case(content=_content, what=_what, name=_name):
        @case("state", f"status-{name}", "{work}/state/runs/r1/status.json", what)
        def build(work, shared):
            write(state_with_run(work) / "runs" / "r1" / "status.json", content)
            return _resume(work)
    _status_case()


for _name, _content, _what in [
        ("garbage", b"\x00garbage" * 20, "not a readable safetensors"),
        ("no-metadata", None, "no metadata"),
        ("round-not-int", {**GOOD_META, "round": "x"}, "'round'"),
        ("history-not-json", {**GOOD_META, "history": "[{"}, "'history'"),
        ("summary-wrong-type", {**GOOD_META, "summary": json.dumps({"task": "binary"})},
         "'summary"),
        ("missing-array", {**GOOD_META, "order": json.dumps(["w", "b"])}, "'b'")]:
    def _checkpoint_case(content=_content, what=_what, name=_name):
        @case("state", f"checkpoint-{name}", "{work}/state/runs/r1/round.safetensors", what)
        def build(work, shared):
            data = content if isinstance(content, bytes) else round_checkpoint(content)
            write(state_with_run(work) / "runs" / "r1" / "round.safetensors", data)
            return _resume(work)
    _checkpoint_case()


@case("state", "checkpoint-absent", "{work}/state/runs/r1/round.safetensors", "medfed run")
def _(work, shared):
    state_with_run(work)
    return _resume(work)


@case("state", "run-config-garbage", "{work}/state/runs/r1/config.json", "not valid JSON")
def _(work, shared):
    write(state_with_run(work) / "runs" / "r1" / "config.json", "{garbage")
    return _resume(work)


@case("state", "run-config-wrong-type", "config.json: rounds", "whole")
def _(work, shared):
    write(state_with_run(work) / "runs" / "r1" / "config.json", json.dumps({"rounds": "x"}))
    return _resume(work)


@case("state", "server-json-garbage", "{work}/state/server.json", "not valid JSON")
def _(work, shared):
    write(work / "state" / "server.json", "{oops")
    return _resume(work)


@case("state", "server-json-wrong-type", "{work}/state/server.json", "'address'")
def _(work, shared):
    write(work / "state" / "server.json", json.dumps({"address": 9093}))
    return _resume(work)


for _name, _content, _what in [("binary", b"\xff\xfe\x00\x01", "binary"),
                               ("not-json", "{nodes", "not valid JSON"),
                               ("list", "[1, 2]", "not an object"),
                               ("entry-wrong-type", json.dumps({"h0": {"node_id": 5}}),
                                "'h0.node_id'")]:
    def _nodes_case(content=_content, what=_what, name=_name):
        @case("state", f"nodes-add-{name}", "{work}/state/nodes.json", what)
        def build(work, shared):
            state = state_with_run(work)
            write(state / "nodes.json", content)
            return ["nodes", "add", str(node_key(work)), "--name", "h1", "--state", str(state)]
    _nodes_case()


@case("state", "nodes-list-garbage", "{work}/state/nodes.json", "not valid JSON")
def _(work, shared):
    write(work / "state" / "nodes.json", "{")
    return ["nodes", "list", "--state", str(work / "state")]


_GOOD_SIGNATURE = {"algorithm": "ed25519", "public_key": base64.b64encode(b"k" * 32).decode(),
                   "key_id": "x", "signature": base64.b64encode(b"s" * 64).decode(),
                   "signed": {"weights_sha256": "0" * 64, "card_sha256": "0" * 64}}

for _name, _content, _what in [
        ("list", "[]", "not an object"),
        ("not-json", "{signed", "not JSON"),
        ("binary", b"\x00\x9f\x92\x96", "not JSON"),
        ("signed-string", json.dumps({**_GOOD_SIGNATURE, "signed": "abc"}), "'signed'"),
        ("signature-number", json.dumps({**_GOOD_SIGNATURE, "signature": 5}), "'signature'"),
        ("bad-base64", json.dumps({**_GOOD_SIGNATURE, "signature": "@@@"}), "base64"),
        ("short-key", json.dumps({**_GOOD_SIGNATURE,
                                  "public_key": base64.b64encode(b"k").decode()}), "Ed25519"),
        ("algorithm", json.dumps({**_GOOD_SIGNATURE, "algorithm": "rsa"}), "'algorithm'")]:
    def _signature_case(content=_content, what=_what, name=_name):
        @case("state", f"signature-{name}", "{work}/model/signature.json", what)
        def build(work, shared):
            return ["model", "verify", str(model_dir(work, content))]
    _signature_case()


for _name, _content, _what in [
        ("binary", b"\x89PNG\r\n\x1a\n\xff\xfe", "binary"),
        ("list-line", "[1, 2]\n", "not an object"),
        ("number-line", "42\n", "not an object"),
        ("not-json", "{\"seq\": 1,\n", "not JSON"),
        ("no-chain-fields", json.dumps({"seq": 1, "event": "x"}) + "\n", "'prev'/'hash'")]:
    def _audit_case(content=_content, what=_what, name=_name):
        @case("state", f"audit-{name}", "{work}/audit.jsonl", what)
        def build(work, shared):
            return ["audit", "verify", str(write(work / "audit.jsonl", content))]
    _audit_case()


@case("state", "status-finished", "{work}/state/runs/r1/status.json", "already finished")
def _(work, shared):
    write(state_with_run(work) / "runs" / "r1" / "status.json",
          json.dumps({"status": "finished", "run_id": "r1"}))
    return _resume(work)


@case("state", "checkpoint-all-rounds-done", "{work}/state/runs/r1/round.safetensors",
      "nothing to resume")
def _(work, shared):
    write(state_with_run(work) / "runs" / "r1" / "round.safetensors",
          round_checkpoint({**GOOD_META, "round": "3"}))
    return _resume(work)


@case("cli", "run-without-config", "medfed run", "--resume")
def _(work, shared):
    state_with_run(work)
    return ["run", "--state", str(work / "state"), "--no-track"]


def _audit_log(work: Path) -> list[str]:
    from medfed.deploy import audit

    for event in ("server_started", "node_registered", "run_started"):
        audit.append(work / "audit.jsonl", event, who="test")
    return (work / "audit.jsonl").read_text().splitlines()


@case("state", "audit-reordered", "{work}/audit.jsonl line 2", "tampered")
def _(work, shared):
    lines = _audit_log(work)
    write(work / "audit.jsonl", "\n".join([lines[0], lines[2], lines[1]]) + "\n")
    return ["audit", "verify", str(work / "audit.jsonl")]


@case("state", "audit-altered", "{work}/audit.jsonl line 3", "tampered")
def _(work, shared):
    lines = _audit_log(work)
    write(work / "audit.jsonl", "\n".join([*lines[:2], lines[2].replace("test", "tset")]) + "\n")
    return ["audit", "verify", str(work / "audit.jsonl")]


@case("state", "audit-truncated", "{work}/audit.jsonl", "truncated")
def _(work, shared):
    lines = _audit_log(work)
    write(work / "audit.jsonl", "\n".join(lines[:2]) + "\n")
    return ["audit", "verify", str(work / "audit.jsonl")]


@case("state", "audit-head-garbage", "{work}/audit.head.json", "damaged")
def _(work, shared):
    _audit_log(work)
    write(work / "audit.head.json", b"\x00\x9f garbage")
    return ["audit", "verify", str(work / "audit.jsonl")]


def _signed_model(work: Path) -> Path:
    from medfed.deploy.signing import ensure_signing_key, sign_model_dir

    folder = model_dir(work, "{}")
    sign_model_dir(folder, ensure_signing_key(work / "signer"))
    return folder


@case("state", "signed-weights-altered", "{work}/model/model.safetensors", "download")
def _(work, shared):
    folder = _signed_model(work)
    write(folder / "model.safetensors", b"weightz")
    return ["model", "verify", str(folder)]


@case("state", "signed-card-altered", "{work}/model/model_card.json", "download")
def _(work, shared):
    folder = _signed_model(work)
    write(folder / "model_card.json", '{"accuracy": 1.0}')
    return ["model", "verify", str(folder)]


@case("state", "signed-by-another-key", "{work}/model/signature.json", "do not use")
def _(work, shared):
    from medfed.deploy.signing import ensure_signing_key

    folder = _signed_model(work)
    ensure_signing_key(work / "coordinator")
    return ["model", "verify", str(folder), "--key", str(work / "coordinator" / "coordinator.pub")]


@case("state", "signing-key-not-pem", "{work}/pub.pem", "coordinator.pub")
def _(work, shared):
    folder = _signed_model(work)
    return ["model", "verify", str(folder), "--key", str(write(work / "pub.pem", "garbage"))]


for _name, _row, _what in [("steps-string", {**SPEND, "steps": "10"}, "'steps'"),
                           ("rate-above-one", {**SPEND, "sample_rate": 3.0}, "'sample_rate'"),
                           ("noise-null", {**SPEND, "noise_multiplier": None},
                            "'noise_multiplier'"),
                           ("row-not-object", [1, 2], "spend 1"),
                           ("missing-field", {k: v for k, v in SPEND.items() if k != "delta"},
                            "'delta'"),
                           ("extra-field", {**SPEND, "epsilon": 1}, "'epsilon'")]:
    def _ledger_case(row=_row, what=_what, name=_name):
        @case("state", f"ledger-{name}", "{work}/privacy/site-1.json", what)
        def build(work, shared):
            return ["privacy", "report", "--ledger", str(ledger(work, [row]))]
    _ledger_case()


@case("state", "ledger-binary", "{work}/privacy/site-1.json", "binary")
def _(work, shared):
    write(work / "privacy" / "site-1.json", b"\x00\xff\xfe")
    return ["privacy", "report", "--ledger", str(work / "privacy")]


@case("state", "ledger-checksum", "{work}/privacy/site-1.json", "checksum")
def _(work, shared):
    folder = ledger(work, [SPEND])
    data = json.loads((folder / "site-1.json").read_text())
    data["spends"][0]["steps"] = 1
    write(folder / "site-1.json", json.dumps(data))
    return ["privacy", "report", "--ledger", str(folder)]


# --- the test -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """Generated once: a small DICOM segmentation site (series + DICOM-SEG)."""
    from medfed.datasets.imaging.demo import write_demo_sites

    root = tmp_path_factory.mktemp("corpus")
    write_demo_sites(root / "dicom", 1, "segmentation", "dicom", 3, patients=1, size=16, seed=0)
    return root


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every path under ``folder`` with its kind, mode and content hash (size for huge files)."""
    state = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink() or path.is_dir():
            state[key] = ("link" if path.is_symlink() else "dir", path.lstat().st_mode)
        elif path.stat().st_size > 64 << 20:
            state[key] = ("big", path.stat().st_size, path.stat().st_mtime_ns)
        else:
            state[key] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return state


def test_corpus_is_large_and_covers_every_family():
    families = {c.family for c in CASES}
    assert families == {"config", "cli", "site", "state"}
    assert len(CASES) >= 100
    assert len({(c.family, c.name) for c in CASES}) == len(CASES)


@pytest.mark.parametrize("bad", CASES, ids=[f"{c.family}:{c.name}" for c in CASES])
def test_bad_input(bad: Case, shared: Path, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = [str(a) for a in bad.build(work, shared)]
    before = snapshot(work)
    try:
        code, out, err = run_cli(argv, monkeypatch, capsys)
        after = snapshot(work)
    finally:
        for path in work.rglob("*"):
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in out + err
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert LINE.match(lines[0]), lines[0]
    assert bad.where.format(work=work) in lines[0], lines[0]
    assert bad.expect in out + err, out + err
    assert after == before, "the command wrote or changed files"


def test_verbose_shows_the_traceback(tmp_path, monkeypatch, capsys):
    config = write(tmp_path / "c.yaml", "roundz: 3\n")
    code, _, err = run_cli(["--verbose", "simulate", str(config)], monkeypatch, capsys)
    assert code == 2 and "Traceback" in err and "did you mean 'rounds'" in err


def test_option_tables_match_the_builders():
    """config.py types every model's and strategy's options: the tables name exactly the
    builders' own keyword arguments (a new option must be typed too)."""
    import inspect

    from medfed.config import MODEL_OPTIONS, STRATEGY_OPTIONS
    from medfed.models import MODELS, model_builder
    from medfed.strategies import STRATEGIES, strategy_params

    assert set(MODEL_OPTIONS) == set(MODELS)
    for name, options in MODEL_OPTIONS.items():
        params = list(inspect.signature(model_builder(name)).parameters)[2:]
        assert set(options) == set(params), name
    assert set(STRATEGY_OPTIONS) == set(STRATEGIES)
    for name, options in STRATEGY_OPTIONS.items():
        assert set(options) == set(strategy_params(name)), name


def test_valid_options_still_pass():
    from medfed.config import validate

    cfg = validate({"model": {"name": "mlp", "hidden": [64, 32], "dropout": 0.1},
                    "strategy": {"name": "fedadam", "eta": 0.01},
                    "dataset": {"name": "site-folders", "options": {"spatial_size": [32, 32]}}})
    assert cfg.model_options() == {"hidden": [64, 32], "dropout": 0.1}
    assert cfg.strategy_options() == {"eta": 0.01}


# --- good input still passes (the checks refuse damage, not data) -----------------------------


def test_clean_sites_pass_the_checks(shared, tmp_path, monkeypatch, capsys):
    """A clean DICOM series with its DICOM-SEG, and a clean NIfTI folder, pass `data check`."""
    code, out, err = run_cli(["data", "check", str(shared / "dicom" / "site-1")], monkeypatch,
                             capsys)
    assert code == 0, out + err
    site = nifti_site(tmp_path, nifti_bytes(noisy()))
    code, out, err = run_cli(["data", "check", str(site)], monkeypatch, capsys)
    assert code == 0, out + err


def test_allowed_roots_admit_an_outside_folder(tmp_path):
    from medfed.datasets.imaging.manifest import manifest_rows, read_manifest
    from medfed.errors import MedFedError

    write(tmp_path / "archive" / "P" / "image.nii.gz", nifti_bytes(noisy()))
    site = tmp_path / "site"
    write(site / "manifest.csv", "patient_id,image,label\nP,../archive/P/image.nii.gz,1\n")
    with pytest.raises(MedFedError, match="leaves the site folder"):
        manifest_rows(site, read_manifest(site))
    rows = manifest_rows(site, read_manifest(site), allowed_roots=[str(tmp_path / "archive")])
    assert rows[0].image.resolve() == (tmp_path / "archive" / "P" / "image.nii.gz").resolve()


def test_data_check_allow_root_admits_an_outside_folder(tmp_path, monkeypatch, capsys):
    write(tmp_path / "archive" / "P" / "image.nii.gz", nifti_bytes(noisy()))
    site = tmp_path / "site"
    write(site / "manifest.csv", "patient_id,image,label\nP,../archive/P/image.nii.gz,1\n")
    code, out, err = run_cli(["data", "check", str(site)], monkeypatch, capsys)
    assert code == 2 and "leaves the site folder" in err
    code, out, err = run_cli(["data", "check", str(site), "--allow-root",
                              str(tmp_path / "archive")], monkeypatch, capsys)
    assert code == 0, out + err
    assert "OK" in out


def test_demo_data_lands_whole_and_leaves_no_stage(tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo"
    code, _, err = run_cli(["demo-data", "sepsis", str(out), "--sites", "2", "--patients", "3"],
                           monkeypatch, capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["site-1", "site-2"]
    assert len(list((out / "site-2").glob("*.psv"))) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no staging folder left


def test_numeric_column_with_blanks_stays_numeric(tmp_path):
    """Empty cells are missing values, not text: the column stays one numeric input."""
    from medfed.datasets.clinical.csv_table import load

    path = clinical_csv(tmp_path, crp=lambda i: "" if i in (3, 9) else f"{i % 7}.5")
    data = load(str(path))
    assert data.feature_names == ["age", "crp", "sodium"] and len(data.x) == CSV_ROWS - 2
