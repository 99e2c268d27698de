"""Nothing identifying leaves the site: a federation on demo site folders, every message the
server receives, the logs, the report and the MLflow run are scanned for planted PHI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pydicom
import yaml
from typer.testing import CliRunner

from medfed.datasets.imaging.demo import patient_name, write_demo_sites


def planted(sites: list[Path]) -> list[str]:
    """Patient IDs and names from the manifests and DICOM headers, and every file path."""
    needles = set()
    for number, site in enumerate(sites, start=1):
        manifest = pd.read_csv(site / "manifest.csv")
        for pid, image in zip(manifest["patient_id"], manifest["image"], strict=True):
            needles |= {pid, image, str((site / image).resolve())}
            patient = int(pid.rsplit("-", 1)[1])
            needles.add(patient_name(number, patient))
        header = pydicom.dcmread(next((site / manifest["image"][0]).parent.rglob("*.dcm")),
                                 stop_before_pixels=True)
        needles |= {str(header.PatientName), str(header.PatientID)}
    return sorted(needles)


def message_text(message) -> str:
    """Everything a reply carries: configs, metrics, array names and bytes, metadata."""
    parts = [str(message.metadata)]
    content = message.content if message.has_content() else {}
    for name, record in content.items():
        parts.append(name)
        if hasattr(record, "to_torch_state_dict") or type(record).__name__ == "ArrayRecord":
            for key, array in record.items():
                parts += [key, bytes(array.data).decode("latin-1")]
        else:
            parts.append(json.dumps({k: str(v) for k, v in dict(record).items()}))
    return "\n".join(parts)


def test_no_phi_reaches_the_server(tmp_path, monkeypatch, caplog):
    sites = write_demo_sites(tmp_path / "hospitals", 2, "classification", "dicom", 2,
                             patients=12, size=16)
    needles = planted(sites)
    assert any(n.startswith("PHIDOE^") for n in needles) and len(needles) > 48

    from medfed.simulation import engine

    replies: list[str] = []
    deliver = engine.InProcessGrid._deliver

    def recording(self, message):
        reply = deliver(self, message)
        replies.append(message_text(reply))
        return reply

    monkeypatch.setattr(engine.InProcessGrid, "_deliver", recording)
    config = {"name": "phi-test",
              "dataset": {"name": "site-folders",
                          "options": {"roots": [str(s) for s in sites], "spatial_size": [16, 16],
                                      "window": "soft_tissue",
                                      "cache_dir": str(tmp_path / "cache")}},
              "partition": {"scheme": "natural", "sites": 2},
              "model": {"name": "small_cnn", "channels": [4, 8]},
              "train": {"batch_size": 8, "lr": 0.01, "optimizer": "adam"},
              "rounds": 2, "seed": 0}
    path = tmp_path / "phi.yaml"
    path.write_text(yaml.safe_dump(config))
    from medfed.cli.main import app

    caplog.set_level(logging.DEBUG)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["simulate", str(path), "--out", str(out), "--verbose"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert len(replies) >= 2 * 3  # summary + train + evaluate from both sites

    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert runs, "the run was not logged to MLflow"
    run_text = json.dumps([[r.info.run_name, r.data.to_dictionary()] for r in runs])
    assert "site-folders" in run_text  # the scan reads the real params
    artifacts = "\n".join(p.read_text(errors="replace") for p in out.rglob("*")
                          if p.is_file() and p.suffix in (".json", ".md", ".csv", ".txt"))
    logs = "\n".join(r.getMessage() for r in caplog.records)
    scanned = {"server messages": "\n".join(replies), "log lines": logs,
               "console": result.output, "report and artifacts": artifacts,
               "MLflow run": run_text}
    for where, text in scanned.items():
        leaked = [n for n in needles if n in text]
        assert not leaked, f"PHI in {where}: {leaked[:5]}"
