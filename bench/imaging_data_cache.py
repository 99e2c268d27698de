"""Site-folder loading: first run (decode DICOM series + DICOM-SEG) vs cached runs.

Writes demo site folders to a temporary directory, then prints one JSON line per case:
`data check`, the first `site-folders` load, and a second load from the on-disk cache.
Usage: python bench/imaging_data_cache.py [--sites 3] [--patients 16] [--format dicom]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--patients", type=int, default=16)
    parser.add_argument("--format", default="dicom", choices=["dicom", "nifti"])
    args = parser.parse_args()

    import monai.transforms  # noqa: F401 (import cost is not loading cost)

    from medfed.datasets import load_dataset
    from medfed.datasets.imaging.check import check_site
    from medfed.datasets.imaging.demo import write_demo_sites

    with tempfile.TemporaryDirectory() as tmp:
        sites = write_demo_sites(Path(tmp) / "sites", args.sites, "segmentation", args.format,
                                 3, patients=args.patients)
        n = args.sites * args.patients
        base = {"format": args.format, "volumes": n, "shape": [32, 32, 16]}
        start = time.perf_counter()
        for site in sites:
            assert check_site(site).ok
        print(json.dumps({"case": "data check (every row decoded)", **base,
                          "seconds": round(time.perf_counter() - start, 3)}))
        options = {"roots": [str(s) for s in sites], "task": "segmentation",
                   "spatial_size": [32, 32, 16], "window": "soft_tissue",
                   "cache_dir": str(Path(tmp) / "cache")}
        for case in ("first load (decode + preprocess + cache)", "second load (cache, mmap)"):
            start = time.perf_counter()
            data = load_dataset("site-folders", options)
            seconds = time.perf_counter() - start
            print(json.dumps({"case": case, **base, "seconds": round(seconds, 3),
                              "volumes_per_s": round(len(data.y) / seconds, 1)}))


if __name__ == "__main__":
    main()
