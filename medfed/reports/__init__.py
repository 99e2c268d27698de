"""What a run produces for people: report.json/report.md and plots, per-task, imaging,
multimodal and sweep sections, and MLflow tracking. Rendering only: nothing here trains."""
