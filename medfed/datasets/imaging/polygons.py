"""Polygon annotations (one JSON per image, as AI-Hub and most labelling tools export them)
rasterised on the image's pixel grid.

The JSON holds ``annotations: [{category, label_type: "polygon", polygon: [[x, y], ...]}]``
(also accepted: the list alone; ``points``/``segmentation`` for the vertices, flat
``[x1, y1, x2, y2, ...]`` or ``[{"x": .., "y": ..}]``; several parts per annotation).
``x`` is the pixel column and ``y`` the row of the stored image (0-based, pixel centres at
integers). Vertices are rounded to the nearest pixel centre, then the polygon is filled with
its outline (Pillow's ImageDraw fill, the same pixels as OpenCV's ``fillPoly`` on rounded
points). A category (or several, ``;``-separated) selects annotations; without one every
polygon is foreground.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medfed.errors import MedFedError

POLYGON_TYPES = {"polygon", "poly", "polyline_closed", "segmentation"}
CATEGORY_KEYS = ("category", "category_name", "label", "class", "name")
POINT_KEYS = ("polygon", "points", "segmentation", "coordinates")


class PolygonProblem(MedFedError):
    """A polygon JSON that cannot be rasterised (the loader names it for `data check`)."""


def _category(annotation: dict[str, Any]) -> str | None:
    for key in CATEGORY_KEYS:
        value = annotation.get(key)
        if isinstance(value, dict):  # e.g. {"name": "ulcer", "id": 3}
            value = value.get("name") or value.get("label")
        if value is not None:
            return str(value).strip()
    return None


def _parts(points: Any) -> list[np.ndarray]:
    """Vertices as (P, 2) arrays of (x, y), one per polygon part."""
    if isinstance(points, dict):
        points = [points]
    if not isinstance(points, list) or not points:
        return []
    first = points[0]
    if isinstance(first, dict):
        return [np.asarray([[float(p["x"]), float(p["y"])] for p in points])]
    if isinstance(first, int | float):
        if len(points) % 2:
            raise ValueError("a flat vertex list needs an even count (x1, y1, x2, y2, ...)")
        return [np.asarray(points, float).reshape(-1, 2)]
    if isinstance(first, list) and first and isinstance(first[0], int | float) \
            and len(first) == 2 and all(isinstance(p, list) and len(p) == 2 for p in points):
        return [np.asarray(points, float)]
    return [part for item in points for part in _parts(item)]  # several parts


def read_polygons(path: Path, category: str | None = None) -> list[np.ndarray]:
    """The (P, 2) (x, y) vertex arrays of the selected polygon annotations of ``path``."""
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolygonProblem(f"{path}: not a readable JSON annotation file "
                             f"({exc.__class__.__name__}); save it as UTF-8 JSON") from None
    annotations = content.get("annotations", content.get("shapes")) \
        if isinstance(content, dict) else content
    if not isinstance(annotations, list):
        raise PolygonProblem(f"{path}: no 'annotations' list; export polygons as "
                             "{'annotations': [{'category', 'label_type': 'polygon', "
                             "'polygon': [[x, y], ...]}]}")
    wanted = None if category is None else {c.strip().lower() for c in category.split(";")}
    polygons = []
    for number, annotation in enumerate(annotations, start=1):
        if not isinstance(annotation, dict):
            continue
        name = _category(annotation)
        if wanted is not None and (name or "").lower() not in wanted:
            continue
        kind = str(annotation.get("label_type", annotation.get("type",
                   annotation.get("shape_type", "polygon")))).lower()
        if kind not in POLYGON_TYPES:
            raise PolygonProblem(f"{path}: annotation {number} ({name}) is a {kind!r}, not a "
                                 "polygon; choose a category drawn as polygons")
        points = next((annotation[k] for k in POINT_KEYS if k in annotation), None)
        try:
            parts = _parts(points)
        except (ValueError, KeyError, TypeError) as exc:
            raise PolygonProblem(f"{path}: annotation {number} ({name}): unreadable vertices "
                                 f"({exc}); give [[x, y], ...]") from None
        for part in parts:
            if len(part) < 3 or not np.all(np.isfinite(part)):
                raise PolygonProblem(f"{path}: annotation {number} ({name}): a polygon needs "
                                     "at least 3 finite (x, y) vertices")
        polygons += parts
    return polygons


def rasterize(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """(rows, cols) uint8 mask, 1 where a polygon (vertices rounded to pixel centres) covers
    the pixel, outline included."""
    from PIL import Image, ImageDraw

    rows, cols = shape
    canvas = Image.new("L", (cols, rows), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        draw.polygon([(int(x), int(y)) for x, y in np.rint(polygon)], fill=1, outline=1)
    return np.asarray(canvas, dtype=np.uint8)


def polygon_mask(path: Path, shape: tuple[int, int], category: str | None = None) -> np.ndarray:
    """The JSON's selected polygons as a (rows, cols) int64 mask on a ``shape`` pixel grid."""
    polygons = read_polygons(path, category)
    for polygon in polygons:
        x, y = polygon[:, 0], polygon[:, 1]
        if x.max() < 0 or y.max() < 0 or x.min() > shape[1] - 1 or y.min() > shape[0] - 1:
            raise PolygonProblem(f"{path}: a polygon lies outside the {shape[1]}x{shape[0]} "
                                 "image (x = column, y = row); pair the JSON with its image")
    return rasterize(polygons, shape).astype(np.int64)
