"""Recipes: the whole Minitron pipeline from one YAML file, resumable (``hf-minitron run RECIPE.yaml``).

A recipe names the teacher, the data and the stages with their configs::

    name: demo                      # identifies the run in output_dir (default: the file's name)
    output_dir: outputs/demo
    teacher: default                # the embedded SmolLM2-135M-Instruct
    data: corpus.jsonl              # optional when a generate-data stage makes it
    stages:
      importance: {num_samples: 64, seq_len: 256}
      prune: {intermediate_size: 768}
      distill: {max_steps: 200, learning_rate: 3e-4}
      eval: {}

Stages run in pipeline order (:data:`hf_minitron.stages.STAGE_TABLE`) whatever their order in the file; a stage
that is absent is skipped. A field a stage leaves unset is filled from an earlier stage's product (the prune stage's
``model`` is the teacher, or the corrected teacher; its ``scores`` the importance stage's output; distill's
``student`` the pruned model; ...), so a recipe only states what differs from the defaults; ``{output_dir}`` in a
string value stands for the run's directory (``eval.models: ["{output_dir}/04-prune"]``). Each stage writes into
``OUTPUT/NN-stage`` (``output_dir`` and, for trainers, ``checkpoint_dir`` = ``OUTPUT/NN-stage.checkpoints``).

Resumption: when a stage finishes, the runner writes ``OUTPUT/NN-stage.done``, a marker holding the hash of the
stage's config chained with the previous stage's marker hash. A rerun skips each stage whose marker matches; the
first stage whose config (or any earlier stage's) changed reruns, and so does everything after it, never anything
before. A stage killed midway has no marker, so its output is never trusted; a training stage restarted with the
same config resumes from its last Trainer checkpoint. ``from_stage`` forces a rerun from a stage.

Under ``torchrun``/``accelerate launch``, data-parallel stages (importance, cache-teacher, distill, eval, ...) run on
every rank; the others run on the main rank while the rest wait at a barrier. Markers are written by the main rank.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError, yaml_error_text
from .outputs import write_json
from .stages import STAGE_TABLE, canonical_name, get_stage
from .stages.base import StageResult, build_config, config_fields, config_fingerprint_dict, suggest

RECIPE_FILE = "recipe.json"
TOP_LEVEL_KEYS = ("name", "output_dir", "teacher", "data", "stages")
#: products the recipe itself supplies before any stage runs
ROOT_PRODUCTS = ("teacher", "data")


# --- reading a recipe ----------------------------------------------------------------------------------------------
@dataclass
class Recipe:
    """A parsed recipe: top-level settings and ``{stage name: field overrides}`` in pipeline order."""

    name: str
    output_dir: str
    teacher: str = "default"
    data: str | None = None
    stages: dict[str, dict] = field(default_factory=dict)
    source: str | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "output_dir": self.output_dir, "teacher": self.teacher, "data": self.data,
                "stages": self.stages}


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"distill.max_steps=100"`` -> ``(["distill", "max_steps"], 100)``; the value is read as YAML."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r}: write KEY=VALUE, e.g. distill.max_steps=100")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value) if value != "" else None


def load_recipe(source, *, overrides: list[str] | None = None, output_dir: str | None = None) -> Recipe:
    """Read a recipe (a YAML file or a dict), apply ``overrides`` (``"stage.field=value"`` or ``"output_dir=..."``)
    and check its shape; every problem is a :class:`ConfigError` naming the key and the fix."""
    import yaml

    where = "recipe"
    if isinstance(source, dict):
        data = copy.deepcopy(source)
        default_name = "recipe"
    else:
        path = Path(str(source)).expanduser()
        if not path.is_file():
            raise ConfigError(f"recipe {str(source)!r} does not exist; give a YAML file (see recipes/demo.yaml)")
        where = f"recipe {path}"
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{where}: not valid YAML ({yaml_error_text(err)})") from None
        default_name = path.stem
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    for text in overrides or []:
        keys, value = parse_override(text)
        target = data
        if keys[0] not in TOP_LEVEL_KEYS:  # "distill.max_steps" is short for "stages.distill.max_steps"
            keys = ["stages", *keys]
        for key in keys[:-1]:
            target = target.setdefault(key, {}) if isinstance(target.get(key), dict) or key not in target else \
                target[key]
            if target is None:
                target = {}
        target[keys[-1]] = value
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r}{suggest(key, TOP_LEVEL_KEYS)}; a recipe has "
                              f"{', '.join(TOP_LEVEL_KEYS)}")
    out = output_dir or data.get("output_dir")
    if not out:
        raise ConfigError(f"{where}: output_dir is not set; add `output_dir: outputs/NAME` (or pass --output_dir)")
    stages_in = data.get("stages") or {}
    if not isinstance(stages_in, dict) or not stages_in:
        raise ConfigError(f"{where}: `stages` must be a mapping of stage names to their fields, e.g. "
                          "`stages: {importance: {}, prune: {intermediate_size: 768}}`")
    stages = {}
    for name, fields in stages_in.items():
        key = canonical_name(name)
        if key in stages:
            raise ConfigError(f"{where}: stage {key!r} appears twice; a recipe runs each stage once")
        if fields is not None and not isinstance(fields, dict):
            raise ConfigError(f"{where}: stage {name!r} must map field names to values, got {type(fields).__name__}")
        stages[key] = dict(fields or {})
    order = list(STAGE_TABLE)
    stages = dict(sorted(stages.items(), key=lambda kv: order.index(kv[0])))
    if "dpo" in stages and "steerlm" in stages:
        pass  # both alignments in sequence is allowed: SteerLM, then DPO
    return Recipe(name=str(data.get("name") or default_name), output_dir=str(out),
                  teacher=str(data.get("teacher") or "default"), data=data.get("data"), stages=stages,
                  source=None if isinstance(source, dict) else str(source))


# --- planning: directories and inputs ------------------------------------------------------------------------------
@dataclass
class PlannedStage:
    """One stage of a run: its index, directories, the fields the recipe gave, and the inputs it takes."""

    index: int
    name: str
    fields: dict
    output_dir: Path

    @property
    def label(self) -> str:
        return f"{self.index:02d}-{self.name}"

    @property
    def marker(self) -> Path:
        return self.output_dir.with_name(self.label + ".done")

    @property
    def started(self) -> Path:
        return self.output_dir.with_name(self.label + ".started")


def plan_stages(recipe: Recipe) -> list[PlannedStage]:
    root = Path(recipe.output_dir).expanduser().resolve()
    return [PlannedStage(index=i, name=name, fields=fields, output_dir=root / f"{i:02d}-{name}")
            for i, (name, fields) in enumerate(recipe.stages.items(), start=1)]


def stage_values(recipe: Recipe, stage: PlannedStage, products: dict[str, str]) -> dict:
    """The config values of ``stage``: the recipe's fields, then its directories, then unset inputs from
    ``products``."""
    spec = get_stage(stage.name)
    known = config_fields(spec.config_cls)
    values = _expand_run_dir(dict(stage.fields), stage.output_dir.parent)
    values.setdefault("output_dir", str(stage.output_dir))
    if "checkpoint_dir" in known:
        values.setdefault("checkpoint_dir", str(stage.output_dir) + ".checkpoints")
    for fld, product in spec.inputs.items():
        if fld in known and values.get(fld) is None and products.get(product) is not None:
            values[fld] = products[product]
    return values


def _expand_run_dir(value, run_dir: Path):
    """``"{output_dir}"`` inside a recipe's string values -> the run's output directory (e.g. ``eval.models:
    ["{output_dir}/04-prune"]`` names another stage's product wherever the run is written)."""
    if isinstance(value, str):
        return value.replace("{output_dir}", str(run_dir))
    if isinstance(value, list):
        return [_expand_run_dir(v, run_dir) for v in value]
    if isinstance(value, dict):
        return {k: _expand_run_dir(v, run_dir) for k, v in value.items()}
    return value


def _missing_inputs(spec, values: dict) -> list[str]:
    """Input fields that are still unset although the stage's config has no default for them."""
    missing = []
    for fld in spec.inputs:
        f = config_fields(spec.config_cls).get(fld)
        if f is None or values.get(fld) is not None:
            continue
        if f.default is None or f.default is dataclasses.MISSING:
            missing.append(fld)
    return missing


def _produces(name: str) -> str | None:
    try:
        return get_stage(name).produces
    except Exception:  # a stage whose module is not there
        return None


def validate_recipe(recipe: Recipe, *, check_targets: bool = True) -> list[PlannedStage]:
    """Check every stage before any runs: known fields, configs that build (each stage's own ``__post_init__``
    checks), inputs that an earlier stage or the recipe supplies, pruning targets that fit the teacher."""
    planned = plan_stages(recipe)
    products = {"teacher": recipe.teacher, "data": recipe.data}
    prune_products: dict = {}
    for stage in planned:
        spec = get_stage(stage.name)
        values = stage_values(recipe, stage, products)
        where = f"recipe stage {stage.name!r}"
        try:
            build_config(spec.config_cls, values, where=where, command=stage.name)  # the stage's own checks
        except ConfigError as err:
            text = str(err)
            if not text.startswith(where):
                missing = [f for f in _missing_inputs(spec, values) if f in text.split(" ", 1)[0]]
                hint = ""
                if missing:
                    product = spec.inputs[missing[0]]
                    before = list(STAGE_TABLE)[: list(STAGE_TABLE).index(stage.name)]
                    makers = [n for n in before if _produces(n) == product]
                    hint = (f" (no earlier stage of the recipe makes its {product}: add one of "
                            f"{', '.join(makers)} before it, or set {stage.name}.{missing[0]})") if makers else ""
                raise ConfigError(f"{where}: {text}{hint}") from None
            raise
        if stage.name == "prune":
            prune_products = dict(products)
        if spec.produces:
            products[spec.produces] = str(stage.output_dir)
    if check_targets and "prune" in recipe.stages:
        from .stages.prune import check_targets_fit

        prune = next(s for s in planned if s.name == "prune")
        targets = build_config(get_stage("prune").config_cls, stage_values(recipe, prune, prune_products),
                               where="recipe stage 'prune'", command="prune").targets()
        if targets:  # targets from a search stage are checked when it has run
            check_targets_fit(recipe.teacher, targets, where="recipe stage 'prune'")  # correction keeps the sizes
    return planned


# --- hashing and markers -------------------------------------------------------------------------------------------
def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_hash(config, previous_hash: str, recipe: Recipe) -> str:
    """The hash a stage's marker holds: its config (less the fields that do not change the product) chained with the
    previous stage's hash (the first stage chains the recipe's teacher and data)."""
    return _hash({"config": config_fingerprint_dict(config), "previous": previous_hash})


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_json(path: Path, obj) -> None:
    write_json(path, obj, default=str)


def check_run_dir(recipe: Recipe, *, overwrite: bool = False) -> Path:
    """Refuse an output directory that holds another recipe's run (or something that is not a run at all)."""
    root = Path(recipe.output_dir).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"output_dir {root} is a file; give a directory for the run")
    if root.is_dir() and any(root.iterdir()):
        found = _read_json(root / RECIPE_FILE)
        if found is None and not overwrite:
            raise ConfigError(f"output_dir {root} is not empty and holds no recipe run ({RECIPE_FILE}); choose "
                              "another output_dir (or pass --overwrite to start over there)")
        if found is not None and found.get("name") != recipe.name and not overwrite:
            raise ConfigError(f"output_dir {root} holds the run of recipe {found.get('name')!r}, not "
                              f"{recipe.name!r}; choose another output_dir (or pass --overwrite to replace it)")
    return root


# --- running -------------------------------------------------------------------------------------------------------
@dataclass
class StageRecord:
    """What happened to one stage in a run."""

    name: str
    status: str  # "ran", "skipped" (marker matched), "resumed" (from a Trainer checkpoint)
    seconds: float
    result: StageResult


@dataclass
class RecipeResult:
    """The run: per stage what happened, and the final products."""

    output_dir: str
    stages: list[StageRecord]
    products: dict[str, str]

    @property
    def ran(self) -> list[str]:
        return [s.name for s in self.stages if s.status != "skipped"]

    @property
    def skipped(self) -> list[str]:
        return [s.name for s in self.stages if s.status == "skipped"]

    def summary(self) -> str:
        """One screen: stages run/skipped, key metrics, where the outputs are."""
        lines = [f"recipe run in {self.output_dir}", ""]
        for s in self.stages:
            lines.append(f"  {s.status:<8} {s.seconds:7.1f}s  {s.result.headline()}")
        lines.append("")
        lines.append(f"ran: {', '.join(self.ran) or 'nothing (every stage was complete)'}")
        if self.skipped:
            lines.append(f"skipped (complete): {', '.join(self.skipped)}")
        for product in ("student", "report", "scores", "data"):
            if product in self.products:
                lines.append(f"{product}: {self.products[product]}")
        return "\n".join(lines)


class _Dist:
    """The rank layout of this process (a single process when torch.distributed is not set up)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1:
            from accelerate import PartialState

            PartialState(cpu=not _cuda())  # initialises the process group (gloo on CPU, nccl on GPU)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_recipe(recipe, *, overrides: list[str] | None = None, output_dir: str | None = None,
               from_stage: str | None = None, overwrite: bool = False,
               log: Callable[[str], None] | None = print) -> RecipeResult:
    """Run a recipe (a path, a dict or a :class:`Recipe`), skipping the stages whose marker matches.

    Everything is validated before the first stage runs (see :func:`validate_recipe`). ``from_stage`` reruns that
    stage and everything after it. ``overwrite`` lets the run take over an output directory that holds something
    else (it is not cleared; stages overwrite their own folders)."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides=overrides, output_dir=output_dir)
    log = log or (lambda _msg: None)
    planned = validate_recipe(recipe)
    if from_stage is not None:
        from_stage = canonical_name(from_stage)
        if from_stage not in recipe.stages:
            raise ConfigError(f"from_stage={from_stage!r} is not in this recipe (stages: {', '.join(recipe.stages)})")
    dist = _Dist()
    root = check_run_dir(recipe, overwrite=overwrite)
    dist.barrier()
    if dist.main:
        root.mkdir(parents=True, exist_ok=True)
        _write_json(root / RECIPE_FILE, {**recipe.to_dict(), "source": recipe.source})
    dist.barrier()

    products = {"teacher": recipe.teacher, "data": recipe.data}
    previous_hash = _hash({"teacher": recipe.teacher, "data": recipe.data})
    forced = False
    records: list[StageRecord] = []
    for stage in planned:
        spec = get_stage(stage.name)
        forced = forced or stage.name == from_stage
        values = stage_values(recipe, stage, products)
        config = build_config(spec.config_cls, values, where=f"recipe stage {stage.name!r}", command=stage.name)
        digest = stage_hash(config, previous_hash, recipe)
        marker = _read_json(stage.marker)
        if not forced and marker is not None and marker.get("hash") == digest and stage.output_dir.exists():
            result = StageResult(**marker["result"])
            records.append(StageRecord(stage.name, "skipped", 0.0, result))
            log(f"[{stage.label}] complete, skipped ({result.headline()})")
        else:
            record = _run_stage(stage, spec, values, digest, dist, log)
            records.append(record)
            result = record.result
            forced = True  # everything after a rerun stage reruns
        product_path = result.metrics.get("product") if isinstance(result.metrics, dict) else None
        if spec.produces:
            products[spec.produces] = product_path or result.output_dir or str(stage.output_dir)
        previous_hash = digest
    out = RecipeResult(output_dir=str(root), stages=records, products=products)
    if dist.main:
        _write_json(root / "pipeline.json", {"recipe": recipe.to_dict(), "stages": [
            {"name": r.name, "status": r.status, "seconds": r.seconds, **r.result.to_dict()} for r in records],
            "products": products})
    log(out.summary())
    return out


def _run_stage(stage: PlannedStage, spec, values: dict, digest: str, dist: _Dist, log) -> StageRecord:
    """Run one stage (all ranks or the main rank), then write its marker."""
    started = _read_json(stage.started)
    resumable = "resume_from_checkpoint" in config_fields(spec.config_cls)
    status = "ran"
    values = dict(values)
    dist.barrier()  # every rank has read the old start record before the main rank replaces it
    if dist.main:
        stage.marker.unlink(missing_ok=True)
        if started is None or started.get("hash") != digest:  # a different config ran here: start over
            for path in (stage.output_dir, Path(str(stage.output_dir) + ".checkpoints")):
                if path.exists():
                    shutil.rmtree(path)
        _write_json(stage.started, {"hash": digest, "time": time.time()})
    dist.barrier()
    if resumable and started is not None and started.get("hash") == digest:
        values.setdefault("resume_from_checkpoint", "last")
        checkpoints = Path(values.get("checkpoint_dir") or str(stage.output_dir) + ".checkpoints")
        if checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*")):
            status = "resumed"
    values["overwrite"] = True
    config = build_config(spec.config_cls, values, where=f"recipe stage {stage.name!r}", command=stage.name)
    log(f"[{stage.label}] {'resuming' if status == 'resumed' else 'running'} ...")
    start = time.time()
    if spec.distributed or dist.main:
        result = spec.run(config)
    else:
        result = None
    dist.barrier()
    seconds = time.time() - start
    if result is None:  # a rank that waited: the main rank's marker tells what happened
        dist.barrier()
        result = StageResult(**_read_json(stage.marker)["result"])
        return StageRecord(stage.name, status, seconds, result)
    if dist.main:
        _write_json(stage.marker, {"stage": stage.name, "hash": digest, "seconds": seconds,
                                   "result": result.to_dict(), "config": config_fingerprint_dict(config)})
        stage.started.unlink(missing_ok=True)
    dist.barrier()
    log(f"[{stage.label}] done in {seconds:.1f}s: {result.headline()}")
    return StageRecord(stage.name, status, seconds, result)


__all__ = ["Recipe", "RecipeResult", "StageRecord", "load_recipe", "parse_override", "run_recipe", "stage_hash",
           "validate_recipe"]
