"""The shape every pipeline stage has: one dataclass config, one function, one small result object.

A stage module ``hf_minitron/stages/<name>.py`` defines

* ``<Name>Config``: a dataclass documented the way TRL documents its configs (class docstring grouped under
  "Parameters that control ...", every field with ``metadata={"help": ...}``, closed choices as ``Literal[...]``,
  validation in ``__post_init__`` raising :class:`~hf_minitron.errors.ConfigError` that names the field and the fix).
  Training stages subclass the TRL config they drive (``DistillationConfig``, ``SFTConfig``, ``DPOConfig``).
  ``output_dir`` is always where the stage's product goes (a model, scores, a cache, a report); a training stage
  keeps its Trainer checkpoints and logs apart, in ``checkpoint_dir`` (default ``f"{output_dir}.checkpoints"``),
  and has an ``overwrite`` field like every stage;
* ``<Name>Result``: a :class:`StageResult` (where the product is, the key metrics);
* ``run_<name>(config) -> <Name>Result``: the whole stage, including what a command line would add (checks before
  any heavy work, before/after reports, the atomic save: :func:`hf_minitron.outputs.check_output_dir` and
  :func:`hf_minitron.loading.check_model_source` first, all data read and validated through
  :func:`hf_minitron.data.load_records` before any model loads, :func:`hf_minitron.loading.save_model` or
  :func:`hf_minitron.outputs.atomic_output_dir` to write);

and registers itself with :func:`register_stage`. The ``hf-minitron`` subcommands and the recipe runner
(:mod:`hf_minitron.recipe`) are generic shells over :data:`STAGES`: they parse a config, call the function, print
the result. Nothing a shell does is out of reach of a Python caller.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ConfigError

# Fields that never change a stage's product: left out of the recipe runner's config hash.
VOLATILE_FIELDS = frozenset({
    "overwrite", "output_dir", "logging_dir", "logging_steps", "logging_first_step", "logging_strategy",
    "logging_nan_inf_filter", "report_to", "disable_tqdm", "run_name", "push_to_hub", "hub_token", "hub_model_id",
    "hub_strategy", "hub_private_repo", "save_steps", "save_strategy", "save_total_limit", "checkpoint_dir",
    "resume_from_checkpoint", "dataloader_num_workers", "progress", "debug", "local_rank", "ddp_backend",
})


@dataclass
class StageResult:
    """What a stage hands to the next one and prints.

    ``output_dir``: the stage's product (a model directory, scores, a cache, a report folder), or ``None`` for a
    stage that writes nothing. ``metrics``: JSON-able key figures (perplexities, parameter counts, losses, ...).
    """

    stage: str
    output_dir: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"stage": self.stage, "output_dir": self.output_dir, "metrics": self.metrics}

    def headline(self) -> str:
        """One line: where the product is and up to four key metrics."""
        shown = []
        for key, value in list(self.metrics.items())[:4]:
            if isinstance(value, float):
                value = f"{value:.4g}"
            elif isinstance(value, (dict, list)):
                continue
            shown.append(f"{key}={value}")
        where = f" -> {self.output_dir}" if self.output_dir else ""
        return f"{self.stage}{where}" + (f" ({', '.join(shown)})" if shown else "")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


@dataclass(frozen=True)
class StageSpec:
    """A registered stage.

    ``inputs`` maps a config field to the product of an earlier recipe stage that fills it when the recipe leaves it
    unset (products: ``teacher``, ``data``, ``scores``, ``student``, ``cache``, ``report``, ``architecture``).
    ``produces`` is the product this stage's ``output_dir`` becomes. ``distributed``: ``True`` when the stage runs on
    every rank under ``torchrun``/``accelerate launch`` (data-parallel), ``False`` when it runs on the main rank only
    (the others wait at a barrier).
    """

    name: str
    config_cls: type
    run: Callable
    help: str
    order: int
    inputs: dict = field(default_factory=dict)
    produces: str | None = None
    distributed: bool = False
    optional: bool = False


STAGES: dict[str, StageSpec] = {}


def register_stage(name: str, *, config: type, inputs: dict | None = None, produces: str | None = None,
                   distributed: bool = False, optional: bool = False):
    """Decorator registering ``run_<name>(config)`` as stage ``name`` (the CLI subcommand and the recipe key; its help
    line and place in the pipeline come from :data:`hf_minitron.stages.STAGE_TABLE`)."""
    from . import STAGE_TABLE

    order = list(STAGE_TABLE).index(name)
    help_line = STAGE_TABLE[name][1]

    def wrap(fn):
        STAGES[name] = StageSpec(name=name, config_cls=config, run=fn, help=help_line, order=order,
                                 inputs=dict(inputs or {}), produces=produces, distributed=distributed,
                                 optional=optional)
        fn.stage_name = name
        return fn

    return wrap


def suggest(name: str, choices) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def config_fields(config_cls) -> dict[str, dataclasses.Field]:
    """``{name: Field}`` of the init fields of a config class."""
    return {f.name: f for f in dataclasses.fields(config_cls) if f.init}


def build_config(config_cls, values: dict, *, where: str, command: str):
    """``config_cls(**values)`` with an unknown key reported as a :class:`ConfigError` naming ``where`` (e.g.
    ``"recipe stage 'prune'"``), the closest valid field and ``hf-minitron COMMAND --help``."""
    known = config_fields(config_cls)
    for key in values:
        if key not in known:
            raise ConfigError(f"{where}: unknown field {key!r}{suggest(key, known)}; `hf-minitron {command} --help` "
                              "lists the fields")
    hints = _type_hints(config_cls)
    values = {k: _coerce(v, hints.get(k), where=where, key=k) for k, v in values.items()}
    return config_cls(**values)


def _type_hints(config_cls) -> dict:
    import typing

    try:
        return typing.get_type_hints(config_cls)
    except Exception:  # a hint that does not resolve: no coercion
        return {}


def _coerce(value, hint, *, where: str, key: str):
    """A YAML string where the field wants a number or a boolean (YAML 1.1 reads ``1e-3`` as a string) -> that type,
    as the command line's parser would convert it; anything else is left to the config's own checks."""
    import types
    import typing

    if not isinstance(value, str) or hint is None:
        return value
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for kind in (bool, int, float):
        if kind in args:
            try:
                if kind is bool:
                    if value.lower() in ("true", "yes", "1", "false", "no", "0"):
                        return value.lower() in ("true", "yes", "1")
                    continue
                return kind(value)
            except ValueError:
                continue
    if set(args) & {bool, int, float} and not set(args) & {str}:
        raise ConfigError(f"{where}: {key}={value!r} is not a {' or '.join(a.__name__ for a in args if a in (bool, int, float))}")
    return value


def config_to_dict(config) -> dict:
    """JSON-able ``{field: value}`` of a stage config (TRL configs via their own ``to_dict``)."""
    if hasattr(config, "to_dict"):
        data = config.to_dict()
    else:
        data = dataclasses.asdict(config)
    return json.loads(json.dumps(data, default=str))


def config_fingerprint_dict(config) -> dict:
    """The fields that decide a stage's product (everything but :data:`VOLATILE_FIELDS`)."""
    return {k: v for k, v in sorted(config_to_dict(config).items()) if k not in VOLATILE_FIELDS}


__all__ = ["STAGES", "StageResult", "StageSpec", "VOLATILE_FIELDS", "build_config", "config_fields",
           "config_fingerprint_dict", "config_to_dict", "register_stage", "suggest"]
