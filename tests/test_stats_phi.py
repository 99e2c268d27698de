"""`medfed stats` releases no PHI: every reply a site sends, the report and the console are
scanned for the planted patient IDs, names and file paths of demo DICOM site folders."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from medfed.datasets.imaging.demo import write_demo_sites
from tests.test_imaging_data_phi import message_text, planted


def test_no_phi_leaves_a_site_in_statistics(tmp_path, monkeypatch):
    sites = write_demo_sites(tmp_path / "hospitals", 2, "classification", "dicom", 2,
                             patients=12, size=16)
    needles = planted(sites)
    assert any(n.startswith("PHIDOE^") for n in needles)
    from medfed.simulation import engine

    replies: list[str] = []
    deliver = engine.InProcessGrid._deliver

    def recording(self, message):
        reply = deliver(self, message)
        replies.append(message_text(reply))
        return reply

    monkeypatch.setattr(engine.InProcessGrid, "_deliver", recording)
    config = {"name": "phi-stats", "dataset": {"name": "site-folders", "options": {
        "roots": [str(s) for s in sites], "spatial_size": [16, 16],
        "cache_dir": str(tmp_path / "cache")}},
        "partition": {"scheme": "natural", "sites": 2}, "stats": {"min_count": 5}}
    path = tmp_path / "phi.yaml"
    path.write_text(yaml.safe_dump(config))
    from medfed.cli.main import app

    out = tmp_path / "stats"
    result = CliRunner().invoke(app, ["stats", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert len(replies) == 4  # two passes x two sites
    assert sum("intensity_range" in r for r in replies) == 2  # pass 1: ranges
    assert sum("manufacturer" in r for r in replies) == 2  # pass 2: image facts as counts
    report = "\n".join(p.read_text(errors="replace") for p in out.rglob("*")
                       if p.suffix in (".json", ".md"))
    assert "age" in report and "sex" in report  # the clinical columns were summarised
    for where, text in {"site replies": "\n".join(replies), "report": report,
                        "console": result.output}.items():
        leaked = [n for n in needles if n in text]
        assert not leaked, f"PHI in {where}: {leaked[:5]}"
