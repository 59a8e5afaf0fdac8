"""The evaluation report: ``eval.json`` (every figure with its settings) and ``eval.md`` (the same as a table).

``eval.json``::

    {"format": "hf-minitron-eval", "version": 1,
     "settings": {"perplexity": {...}, "throughput": {...}, "toolcall": {...}, "lm_eval": {...}},
     "models": [{"name": ..., "role": "teacher" | "student" | "model", "source": ..., "parameters": ...,
                 "non_embedding_parameters": ..., "perplexity": {...}, "throughput": {...}, "toolcall": {...},
                 "lm_eval": {task: {metric: value}}}, ...],
     "comparison": {"student_over_teacher": {...ratios...}} | {},
     "notes": [...]}

A section a run skipped is absent from ``settings`` and from every model. Ratios are student / teacher.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

REPORT_JSON = "eval.json"
REPORT_MD = "eval.md"
FORMAT = "hf-minitron-eval"

#: (label, path into a model entry, format) of the table rows, in order.
ROWS = (
    ("parameters", ("parameters",), "{:,}"),
    ("non-embedding parameters", ("non_embedding_parameters",), "{:,}"),
    ("perplexity", ("perplexity", "perplexity"), "{:.3f}"),
    ("NLL (nats/token)", ("perplexity", "nll"), "{:.4f}"),
    ("generation tokens/s", ("throughput", "tokens_per_s"), "{:.1f}"),
    ("first-token latency (ms)", ("throughput", "first_token_latency_s"), "ms"),
    ("tool call: JSON", ("toolcall", "json_rate"), "{:.1%}"),
    ("tool call: valid", ("toolcall", "valid_call_rate"), "{:.1%}"),
    ("tool call: name match", ("toolcall", "name_match_rate"), "{:.1%}"),
    ("tool call: tools given via", ("toolcall", "tools_given_via"), "{}"),
)
RATIOS = {"parameters": ("parameters",), "non_embedding_parameters": ("non_embedding_parameters",),
          "perplexity": ("perplexity", "perplexity"), "tokens_per_s": ("throughput", "tokens_per_s"),
          "first_token_latency_s": ("throughput", "first_token_latency_s")}


def _get(entry: dict, path):
    for key in path:
        if not isinstance(entry, dict) or key not in entry:
            return None
        entry = entry[key]
    return entry


def comparison(models: list[dict]) -> dict:
    """``{"student_over_teacher": {figure: student / teacher}}`` when the run has one teacher and one student."""
    teacher = [m for m in models if m["role"] == "teacher"]
    student = [m for m in models if m["role"] == "student"]
    if len(teacher) != 1 or len(student) != 1:
        return {}
    ratios = {}
    for name, path in RATIOS.items():
        t, s = _get(teacher[0], path), _get(student[0], path)
        if isinstance(t, (int, float)) and isinstance(s, (int, float)) and t:
            ratios[name] = s / t
    return {"student_over_teacher": ratios}


def build_report(models: list[dict], settings: dict, notes: list[str]) -> dict:
    return {"format": FORMAT, "version": 1, "settings": settings, "models": models,
            "comparison": comparison(models), "notes": notes}


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if fmt == "ms":
        return f"{value * 1000:.1f}"
    return fmt.format(value)


def markdown_table(report: dict) -> str:
    """Rows = figures, columns = models (plus ``student / teacher`` when there is one of each)."""
    models = report["models"]
    ratios = report.get("comparison", {}).get("student_over_teacher", {})
    head = [f"{m['role']}: `{m['name']}`" if m["role"] != "model" else f"`{m['name']}`" for m in models]
    if ratios:
        head.append("student / teacher")
    lines = ["| | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    rows = list(ROWS)
    tasks = sorted({t for m in models for t in (m.get("lm_eval") or {}) if not t.startswith("_")})
    for task in tasks:
        metrics = sorted({k for m in models for k in (m.get("lm_eval") or {}).get(task, {})})
        rows += [(f"lm-eval {task} {metric}", ("lm_eval", task, metric), "{:.4f}") for metric in metrics]
    for label, path, fmt in rows:
        values = [_get(m, path) for m in models]
        if all(v is None for v in values):
            continue
        cells = [_cell(v, fmt) for v in values]
        if ratios:
            key = next((k for k, p in RATIOS.items() if p == path), None)
            cells.append(f"{ratios[key]:.3f}" if key in ratios else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    """``eval.md``: the table, then the settings each figure was measured with, then the notes."""
    parts = ["# Evaluation", "", markdown_table(report), "", "## Settings", ""]
    for section, settings in report["settings"].items():
        shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in settings.items())
        parts.append(f"- **{section}**: {shown}")
    if report["notes"]:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(parts) + "\n"


def write_report(report: dict, out_dir, *, overwrite: bool = False) -> Path:
    """Write ``eval.json`` and ``eval.md`` into ``out_dir`` (one atomic directory write)."""
    from ..outputs import atomic_output_dir

    with atomic_output_dir(out_dir, overwrite=overwrite, name="output_dir", fix="set overwrite (--overwrite)") as tmp:
        (tmp / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (tmp / REPORT_MD).write_text(markdown_report(report), encoding="utf-8")
    return Path(out_dir).expanduser().resolve()


def read_report(path) -> dict:
    """An ``eval.json`` (``path`` is the file or the folder holding it); a file that is not one is a
    :class:`~hf_minitron.errors.DataError`."""
    from ..errors import DataError
    from ..outputs import read_json

    p, report = read_json(path, REPORT_JSON, error=DataError, invalid="re-run the eval stage", label="report ",
                          missing="run the eval stage first (`hf-minitron eval --output_dir DIR ...`)")
    if not isinstance(report, dict) or report.get("format") != FORMAT:
        raise DataError(f"{p} is not an hf-minitron evaluation report (no format {FORMAT!r}); re-run the eval stage")
    return report


__all__ = ["FORMAT", "REPORT_JSON", "REPORT_MD", "build_report", "comparison", "markdown_report", "markdown_table",
           "read_report", "write_report"]
