"""`medfed data ...` (check and inspect a hospital's site folder) and `medfed demo-data ...`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from medfed.errors import MedFedError

data_app = typer.Typer(help="Check and inspect a hospital's site folder before training: "
                            "`medfed data check SITE_DIR`, `medfed data inspect SITE_DIR`.",
                       no_args_is_help=True)
demo_app = typer.Typer(help="Write demo data a fresh machine can train on, no download: "
                            "`medfed demo-data imaging OUT --sites 3`.", no_args_is_help=True)

out_console = Console()
err_console = Console(stderr=True)


def _progress(console: Console, label: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                    console=console, transient=True)


def _write_demo(unit: str, out: Path, write, next_hint) -> list[Path]:
    """Run ``write(folder, progress)`` under a progress bar over ``unit``s; list what it wrote.

    The writer fills a temporary folder next to ``out``, moved into ``out`` only when it
    finished: a refused or interrupted run leaves nothing. ``progress(done, total)`` is the
    callback handed to the writer; ``next_hint(folders)`` is the command to run next."""
    from medfed.io import staged_dir

    with staged_dir(out, "OUT") as stage, _progress(out_console, f"writing {unit}") as progress:
        bar = progress.add_task(unit, total=None)
        staged = write(stage, lambda done, total=None: progress.update(bar, completed=done,
                                                                       total=total))
    folders = [Path(out) / Path(folder).relative_to(stage) for folder in staged]
    for folder in folders:
        out_console.print(f"wrote {folder}", highlight=False)
    out_console.print(f"[dim]next: {next_hint(folders)}[/dim]", highlight=False)
    return folders


def _summary_table(title: str, summary: dict) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for key, value in summary.items():
        if isinstance(value, list):  # histograms
            value = ", ".join(f"{b['from']:g}-{b['to']:g}: {b['count']}" for b in value)
        elif isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
        table.add_row(key.replace("_", " "), str(value))
    return table


@data_app.command("check")
def data_check(
    site_dir: Path = typer.Argument(..., help="The site folder (or its one table file): "
                                    "manifest.csv + images (imaging), .psv ICU stays (sepsis), "
                                    "a UCI processed.*.data file (heart-disease) or one CSV "
                                    "export (csv)."),
    fmt: str = typer.Option("auto", "--format", help="auto (from the folder), site-folders, "
                            "multimodal-sites, heart-disease, csv or sepsis."),
    labels: str | None = typer.Option(None, help="Allowed labels, comma-separated (default: "
                                      "labels.txt in the folder, if any), e.g. --labels 0,1."),
    label_column: str = typer.Option("label", help="The label column."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    clinical: str | None = typer.Option(None, help="Multimodal site: the declared clinical "
                                        "columns, comma-separated, categorical ones with "
                                        ":cat, e.g. --clinical age,crp,sex:cat. Checks the "
                                        "join of images and clinical rows per patient_id."),
    allow_root: list[Path] = typer.Option([], "--allow-root", help="A folder outside the "
                                          "site folder that manifest paths may point into "
                                          "(as dataset.options.allowed_roots; repeatable). "
                                          "Without it such a path is a problem."),
) -> None:
    """List every problem of a site folder (or its one table file) in one pass; exit 2 if any.

    Every format a hospital folder can hold, told apart by its files (or --format):
    manifest.csv (imaging; with --clinical, multimodal), .psv ICU stays (sepsis), a UCI
    processed.<centre>.data file or a CSV naming its 14 columns (heart-disease), any other
    CSV (csv). Reads every row as training would; one line per problem with its row (or file)
    and fix. What training works around (rows with a missing value left out, a random split,
    one class in training) prints as a warning. A clean site prints a summary.

    Examples: `medfed data check /data/site`, `medfed data check processed.va.data`,
    `medfed data check icu/ --json`."""
    from medfed.datasets.site_check import check_any_site

    allowed = [v.strip() for v in labels.split(",") if v.strip()] if labels else None
    with _progress(err_console, "checking rows") as progress:
        bar = progress.add_task("rows", total=None)
        result = check_any_site(site_dir, fmt, labels=allowed, label_column=label_column,
                                clinical=clinical, allowed_roots=[str(r) for r in allow_root],
                                progress=lambda done, total: progress.update(
                                    bar, completed=done, total=total))
    if as_json:
        sys.stdout.write(json.dumps({"site": str(site_dir), "kind": result.kind,
                                     "ok": result.ok, "problems": result.lines(),
                                     "warnings": result.warnings(),
                                     "summary": result.summary}, default=str) + "\n")
    else:
        for line in result.lines():
            out_console.print(line, highlight=False, soft_wrap=True, markup=False)
        for line in result.warnings():  # usable, with care: e.g. a tilted series, resampled
            err_console.print(line, style="yellow", highlight=False, soft_wrap=True,
                              markup=False)
        if result.ok:
            out_console.print(_summary_table(f"{site_dir}: OK ({result.kind} site)",
                                             result.summary))
    if not result.ok:  # main() prints this one line and exits 2
        raise MedFedError(f"{len(result.problems)} problem(s) listed above", where=str(site_dir),
                          fix="fix them and run `medfed data check` again")


@data_app.command("inspect")
def data_inspect(
    site_dir: Path = typer.Argument(..., help="The site folder (manifest.csv + images)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Montage PNG (default: "
                                    "./<folder name>-montage.png)."),
    samples: int = typer.Option(8, min=1, help="How many samples the montage shows (every "
                                "label)."),
    label_column: str = typer.Option("label", help="The label column."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Summarise a site folder and draw a PNG montage of a few samples.

    Counts per label, image size and spacing histograms, modalities; masks outlined in red in
    the montage. Nothing leaves the machine."""
    from medfed.datasets.imaging.inspect_site import inspect_site
    from medfed.io import check_output_file

    png = check_output_file(out or Path(f"{Path(site_dir).resolve().name}-montage.png"))
    summary, result = inspect_site(site_dir, png, samples, label_column)
    if result.kind == "imaging" and not result.samples:  # nothing readable: no montage either
        first = result.problems[0].line() if result.problems else "the manifest lists no rows"
        raise MedFedError(f"no readable image in the site folder; {first}", where=str(site_dir),
                          fix=f"fix the rows `medfed data check {site_dir}` lists")
    if as_json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
        return
    out_console.print(_summary_table(f"{site_dir} ({result.kind} site)", summary))
    if result.problems:
        err_console.print(f"[yellow]{len(result.problems)} row(s) unreadable or invalid[/yellow]"
                          f"; see `medfed data check {site_dir}`", highlight=False)


@demo_app.command("imaging")
def demo_imaging(
    out: Path = typer.Argument(..., help="Folder to write site-1, site-2, ... into."),
    sites: int = typer.Option(3, min=1, help="How many hospitals (site folders)."),
    task: str = typer.Option("classification", help="classification (label 1 = a lesion) or "
                             "segmentation (lesion masks)."),
    fmt: str = typer.Option("dicom", "--format", help="dicom (CT series; masks as DICOM-SEG) "
                            "or nifti."),
    dims: int = typer.Option(3, min=2, max=3, help="3 (volumes) or 2 (single slices)."),
    patients: int | None = typer.Option(None, min=1, help="Patients per site (default 40 for "
                                        "classification, 16 for segmentation)."),
    size: int | None = typer.Option(None, min=8, help="In-plane size in pixels (default 32 for 3D, "
                                    "64 for 2D; 3D volumes have size/2 slices)."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Write imaging site folders made from synthetic CT phantoms (no download).

    Real-format files (DICOM series with UIDs, geometry and rescale, or NIfTI) made from
    phantoms with ellipsoid lesions, plus manifest.csv. Patient
    names/IDs are fake but planted in headers and paths, for PHI tests."""
    from medfed.datasets.imaging.demo import write_demo_sites

    for option, value, choices in (("--task", task, ("classification", "segmentation")),
                                   ("--format", fmt, ("dicom", "nifti"))):
        if value not in choices:  # refused before anything is written
            raise MedFedError(f"unknown value {value!r}", where=option,
                              fix=f"choose {' or '.join(choices)}")
    _write_demo("patients", out, lambda folder, progress: write_demo_sites(
        folder, sites, task, fmt, dims, patients, size, seed, progress=progress),
        lambda folders: f"medfed data check {folders[0]}")


@demo_app.command("brats")
def demo_brats(
    out: Path = typer.Argument(..., help="Folder to write site-1, site-2, ... into."),
    sites: int = typer.Option(3, min=1, help="How many hospitals (site folders)."),
    patients: int = typer.Option(12, min=2, help="Patients per site (about 30 % to test)."),
    size: int = typer.Option(48, min=24, help="Field of view in voxels (size x size x size/2, "
                             "1 x 1 x 2 mm)."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Write BraTS-like MRI site folders: FLAIR, T1, T1c and T2 phantoms per patient (NIfTI)
    and a tumour mask with BraTS labels (1 necrotic core, 2 oedema, 4 enhancing).

    The manifest lists the sequences as image_flair, image_t1, image_t1c, image_t2 (channels).
    Sites differ in intensity scale, bias and noise; the last site's T2 is stored at half the
    in-plane resolution (`data check` names it; `spacing` resamples it). Train the regions
    radiologists score (whole tumour, tumour core, enhancing): `medfed simulate
    configs/brats-like.yaml`."""
    from medfed.datasets.imaging.demo_brats import write_brats_sites

    _write_demo("patients", out, lambda folder, progress: write_brats_sites(
        folder, sites, patients, size, seed, progress=progress),
        lambda folders: f"medfed data check {folders[-1]}")


@demo_app.command("sepsis")
def demo_sepsis(
    out: Path = typer.Argument(..., help="Folder to write site-1, site-2, ... into (one .psv "
                               "per ICU stay, PhysioNet 2019 format)."),
    sites: int = typer.Option(2, min=1, help="How many hospitals (site folders)."),
    patients: int = typer.Option(300, min=1, help="ICU stays per site."),
    septic_share: float = typer.Option(0.08, min=0.0, max=1.0,
                                       help="Share of stays that become septic."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Synthetic ICU stays in the PhysioNet/CinC 2019 sepsis format: hourly vitals and labs
    with the real sample's character (~95 % of hourly lab cells empty, stays of 8-336 h,
    ~1.7 % positive hours, onset >= 6 h into the stay); septic stays' vitals and lactate
    drift in the 12 h before onset. Train on them: `medfed simulate configs/sepsis-demo.yaml`."""
    from medfed.datasets.timeseries.sepsis_demo import write_demo

    _write_demo("stays", out, lambda folder, progress: write_demo(
        folder, sites, patients, septic_share, seed,
        progress=lambda done: progress(done, sites * patients)),
        lambda _: f"medfed simulate configs/sepsis-demo.yaml --set dataset.options.path={out}")


@demo_app.command("multimodal")
def demo_multimodal(
    out: Path = typer.Argument(..., help="Folder to write site-1, site-2, ... into."),
    sites: int = typer.Option(4, min=1, help="How many hospitals (site folders)."),
    missing_image: float = typer.Option(0.3, min=0.0, max=0.99,
                                        help="Share of patients without a scan."),
    clinical_only_sites: int = typer.Option(1, min=0, help="How many sites have no images at all "
                                            "(the last ones)."),
    patients: int = typer.Option(120, min=1, help="Patients per site."),
    size: int = typer.Option(32, min=8, help="Image size in pixels (2D, size x size)."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Write multimodal site folders: 2D NIfTI phantom scans + clinical columns per patient.

    The label depends on a lesion in the image AND on clinical values (crp, smoker, age), so
    a fusion model beats either modality alone. Some patients have no scan, some no clinical
    values; the last sites are clinical-only. Train: `medfed simulate
    configs/multimodal-demo.yaml --set dataset.options.path=OUT`."""
    from medfed.datasets.multimodal.demo import write_multimodal_sites

    _write_demo("patients", out, lambda folder, progress: write_multimodal_sites(
        folder, sites, patients, missing_image, clinical_only_sites, size, seed,
        progress=progress),
        lambda folders: f"medfed data check {folders[0]} --clinical age,crp,sex:cat,smoker:cat")
