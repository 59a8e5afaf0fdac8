"""lm-evaluation-harness on a model that is already loaded (the ``eval`` extra: ``pip install 'hf-minitron[eval]'``).

The loaded model and tokenizer are wrapped in lm-eval's ``HFLM`` (no second load) and ``simple_evaluate`` runs the
tasks by name. ``include_path`` adds a folder of task YAML files, e.g. a local task over a local JSONL file, which
runs offline. Results keep lm-eval's metric names without the filter suffix (``acc,none`` -> ``acc``).
"""

from __future__ import annotations

import os

from ..errors import ConfigError

EXTRA_HINT = "install the eval extra: pip install 'hf-minitron[eval]' (it brings lm-eval)"


def check_lm_eval(tasks, include_path: str | None = None) -> None:
    """Refuse, before any model loads, tasks without lm-eval installed or an ``include_path`` that is not a folder."""
    if not tasks:
        return
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError(f"lm_eval_tasks={list(tasks)} needs lm-evaluation-harness, which is not installed; "
                          f"{EXTRA_HINT}") from None
    if include_path is not None and not os.path.isdir(os.path.expanduser(include_path)):
        raise ConfigError(f"lm_eval_include_path={include_path!r} is not a folder; give the folder that holds the "
                          "task YAML files")
    _task_manager(tasks, include_path)


def _task_manager(tasks, include_path):
    """lm-eval's task index (with ``include_path``); an unknown task name is a :class:`ConfigError`."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=os.path.expanduser(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"lm_eval_tasks: unknown task(s) {unknown}; name lm-eval tasks, or put their YAML in a "
                          "folder and set lm_eval_include_path")
    return manager


def run_lm_eval(model, tokenizer, tasks, *, include_path: str | None = None, limit: int | float | None = None,
                num_fewshot: int | None = None, batch_size: int = 4) -> dict:
    """``{task: {metric: value}}`` plus ``"_samples": {task: n}`` of lm-eval on ``model`` (see the module docstring)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise ConfigError(f"lm-evaluation-harness is not installed; {EXTRA_HINT}") from None

    manager = _task_manager(tasks, include_path)
    device = next(model.parameters()).device
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device))
    out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                  num_fewshot=num_fewshot, bootstrap_iters=0, log_samples=False)
    results = {}
    for task, metrics in out["results"].items():
        results[task] = {key.split(",")[0]: value for key, value in metrics.items()
                         if isinstance(value, (int, float)) and not isinstance(value, bool)}
    results["_samples"] = {task: n.get("effective") for task, n in out.get("n-samples", {}).items()}
    return results


def lm_eval_settings(tasks, *, include_path, limit, num_fewshot, batch_size) -> dict:
    import importlib.metadata

    return {"tasks": list(tasks), "include_path": include_path, "limit": limit, "num_fewshot": num_fewshot,
            "batch_size": batch_size, "lm_eval_version": importlib.metadata.version("lm_eval")}


__all__ = ["EXTRA_HINT", "check_lm_eval", "lm_eval_settings", "run_lm_eval"]
