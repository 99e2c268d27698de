"""Polygon JSON masks (AI-Hub style) rasterised on the image grid, against hand-made masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medfed.datasets import load_dataset
from medfed.datasets.imaging.check import check_site
from medfed.datasets.imaging.demo import dicom_slices
from medfed.datasets.imaging.dicom import DicomProblem
from medfed.datasets.imaging.polygons import polygon_mask
from medfed.datasets.imaging.volume import load_image, load_mask

RECTANGLE = [[2, 1], [5, 1], [5, 3], [2, 3]]  # x = column, y = row
TRIANGLE = [[0, 0], [4, 0], [0, 4]]
L_SHAPE = [[1, 1], [6, 1], [6, 2], [2, 2], [2, 5], [1, 5]]


def hand(rows: int, cols: int, cells: list[tuple[int, int]]) -> np.ndarray:
    """A mask drawn by hand: 1 at each (row, col)."""
    mask = np.zeros((rows, cols), np.int64)
    for r, c in cells:
        mask[r, c] = 1
    return mask


def write_json(path: Path, annotations: list[dict]) -> Path:
    path.write_text(json.dumps({"images": {"width": 8, "height": 7},
                                "annotations": annotations}))
    return path


def polygon(category: str, points) -> dict:
    return {"category": category, "label_type": "polygon", "polygon": points}


@pytest.mark.parametrize("points, expected", [
    (RECTANGLE, hand(7, 8, [(r, c) for r in (1, 2, 3) for c in (2, 3, 4, 5)])),
    (TRIANGLE, hand(7, 8, [(r, c) for r in range(5) for c in range(5) if r + c <= 4])),
    (L_SHAPE, hand(7, 8, [(r, c) for r in (1, 2) for c in range(1, 7)]
                   + [(r, c) for r in (3, 4, 5) for c in (1, 2)])),
    # sub-pixel vertices: rounded to the nearest pixel centre (x 1.4 -> 1, 4.6 -> 5)
    ([[1.4, 0.6], [4.6, 0.6], [4.6, 2.4], [1.4, 2.4]],
     hand(7, 8, [(r, c) for r in (1, 2) for c in range(1, 6)])),
])
def test_polygon_matches_hand_made_mask(tmp_path, points, expected):
    path = write_json(tmp_path / "a.json", [polygon("ulcer", points)])
    np.testing.assert_array_equal(polygon_mask(path, (7, 8)), expected)


def test_category_selects_annotations_and_vertex_formats_agree(tmp_path):
    flat = [v for xy in TRIANGLE for v in xy]
    dicts = [{"x": x, "y": y} for x, y in RECTANGLE]
    write_json(tmp_path / "a.json", [
        {"category": "ulcer", "label_type": "polygon", "points": dicts},
        {"category_name": "Cancer", "type": "polygon", "segmentation": [flat]},
        {"category": "ruler", "label_type": "line", "polygon": [[0, 6], [7, 6]]}])
    rect = polygon_mask(tmp_path / "a.json", (7, 8), "ulcer")
    tri = polygon_mask(tmp_path / "a.json", (7, 8), "cancer")  # case-insensitive
    np.testing.assert_array_equal(rect, polygon_mask(
        write_json(tmp_path / "r.json", [polygon("u", RECTANGLE)]), (7, 8)))
    np.testing.assert_array_equal(tri, polygon_mask(
        write_json(tmp_path / "t.json", [polygon("u", TRIANGLE)]), (7, 8)))
    np.testing.assert_array_equal(polygon_mask(tmp_path / "a.json", (7, 8), "ulcer;cancer"),
                                  np.maximum(rect, tri))
    assert polygon_mask(tmp_path / "a.json", (7, 8), "polyp").sum() == 0  # none on this image
    with pytest.raises(Exception, match="annotation 3 \\(ruler\\) is a 'line', not a polygon"):
        polygon_mask(tmp_path / "a.json", (7, 8))


def test_polygon_on_a_dicom_slice_lands_on_the_drawn_pixels(tmp_path):
    """x = column, y = row of the stored DICOM pixels, whatever MedFed's RAS reordering."""
    image = np.full((1, 7, 8), -100.0, np.float32)
    image[0, 1:6, 1:3] = 300.0  # the L-shape's pixels, drawn in DICOM (row, col) order
    image[0, 1:3, 1:7] = 300.0
    (ds,) = dicom_slices(image, 1, 1, 0.7, 1.0, 50, "F")
    ds.save_as(tmp_path / "slice.dcm", enforce_file_format=True)
    write_json(tmp_path / "slice.json", [polygon("lesion", L_SHAPE)])
    volume = load_image(tmp_path / "slice.dcm")
    mask = load_mask(tmp_path / "slice.json", volume, "lesion")
    assert mask.shape == volume.shape
    np.testing.assert_array_equal(mask, (volume.array > 0).astype(np.int64))


def endoscopy_site(root: Path, n: int = 4) -> Path:
    """PNG 'endoscopy' photos with a bright lesion and its polygon JSON (AI-Hub style)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        x0, y0 = int(rng.integers(2, 12)), int(rng.integers(2, 12))
        photo = np.full((24, 20), 40, np.uint8)
        photo[y0:y0 + 6, x0:x0 + 5] = 220  # rows y0..y0+5, cols x0..x0+4
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo).save(root / "img" / f"{i}.png")
        box = [[x0, y0], [x0 + 4, y0], [x0 + 4, y0 + 5], [x0, y0 + 5]]
        write_json(root / "img" / f"{i}.json", [polygon("ulcer", box),
                                                polygon("polyp", [[0, 0], [1, 0], [0, 1]])])
        rows.append({"patient_id": f"P{i}", "image": f"img/{i}.png", "mask": f"img/{i}.json",
                     "mask_category": "ulcer", "split": "test" if i == 0 else "train"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def test_site_folder_of_photos_with_polygon_masks_trains_on_the_drawn_lesions(tmp_path):
    site = endoscopy_site(tmp_path / "site")
    result = check_site(site)
    assert result.ok and all(s["mask_labels"] == [0, 1] for s in result.samples)
    data = load_dataset("site-folders", {"roots": [str(site)], "task": "segmentation",
                                         "spatial_size": [20, 24],
                                         "cache_dir": str(tmp_path / "cache")})
    assert data.x.shape == (4, 1, 20, 24) and data.y.shape == (4, 1, 20, 24)
    # the lesion (bright pixels) is exactly the mask: the polygon landed on the photo's grid
    np.testing.assert_array_equal(data.y[:, 0], (data.x[:, 0] > 0.5).astype(np.int64))


def test_bad_polygon_json_is_one_problem_line_in_data_check(tmp_path):
    site = endoscopy_site(tmp_path / "site", n=3)
    (site / "img" / "1.json").write_text("{not json")
    write_json(site / "img" / "2.json", [polygon("ulcer", [[40, 40], [50, 40], [45, 50]])])
    lines = check_site(site).lines()
    assert len(lines) == 2
    assert lines[0].startswith("row 2: img/1.json: not a readable JSON annotation file")
    assert "row 3: img/2.json: a polygon lies outside the 20x24 image" in lines[1]
    assert all("fix: fix the polygon JSON" in line for line in lines)
    with pytest.raises(DicomProblem) as info:
        load_mask(site / "img" / "1.json", load_image(site / "img" / "1.png"))
    assert info.value.kind == "annotation"


@pytest.mark.parametrize("flip_x", [False, True])
def test_polygon_on_a_2d_nifti_uses_its_stored_voxel_axes(tmp_path, flip_x):
    """NIfTI: x = first voxel axis, y = second, as stored (before MedFed turns it to RAS)."""
    import nibabel as nib

    stored = np.zeros((8, 7, 1), np.float32)
    stored[2:6, 1:4, 0] = 1.0  # the rectangle's voxels: i 2..5, j 1..3
    affine = np.diag([-1.0 if flip_x else 1.0, 1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(stored, affine), tmp_path / "slice.nii.gz")
    write_json(tmp_path / "slice.json", [polygon("lesion", RECTANGLE)])
    volume = load_image(tmp_path / "slice.nii.gz")
    mask = load_mask(tmp_path / "slice.json", volume)
    np.testing.assert_array_equal(mask, (volume.array > 0).astype(np.int64))
