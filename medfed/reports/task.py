"""Report sections a task adds on top of the metric tables (e.g. the sepsis alarm table).

A task with ``has_report_section`` renders it with ``markdown(extras) -> list[str]`` and
``figures(extras) -> {file name: PNG bytes}``, rendered from ``report["task_report"]`` (computed by
``medfed.simulation.task_report.task_extras``).
"""

from __future__ import annotations

from typing import Any

from medfed.tasks import get_task


def extra_markdown(report: dict[str, Any]) -> list[str]:
    """The task's report.md lines (none when the task or the report has no extras)."""
    task = get_task(report["task"])
    extras = report.get("task_report")
    return task.markdown(extras) if extras else []


def extra_figures(report: dict[str, Any]) -> dict[str, bytes]:
    """The task's figures, file name -> PNG bytes (none when there are no extras)."""
    task = get_task(report["task"])
    extras = report.get("task_report")
    return task.figures(extras) if extras else {}
