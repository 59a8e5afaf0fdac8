"""``hf-minitron`` command line: one subcommand per pipeline stage, plus ``run`` (a whole recipe) and ``info``.

Every stage subcommand is the same thin shell over :mod:`hf_minitron.stages`: ``HfArgumentParser`` over the stage's
config dataclass (flags are the field names, TRL/transformers underscore style: ``--output_dir``, ``--max_steps``),
``--config FILE.yaml`` for any of the same fields (flags on the command line win), then the stage function, then its
result printed. Errors the library raises on purpose (bad input, refused requests) print as
``hf-minitron COMMAND: error: MESSAGE`` with exit code 2 and no traceback; ``--debug`` (or ``HF_MINITRON_DEBUG=1``)
shows the traceback.
"""

from __future__ import annotations

import json
import os
import sys

from ..stages import STAGE_TABLE, available

# commands that are not stages: name -> (module in this package, help)
EXTRA_COMMANDS = {
    "run": ("run", "Run a recipe (YAML): the whole pipeline, resumable; completed stages are skipped."),
    "info": ("info", "Show a model's architecture: layers, hidden, heads, KV heads, ffn, vocab, parameter counts."),
}
# old spellings kept working: `hf-minitron align dpo ...` is `hf-minitron dpo ...`
ALIASES = {("align", "dpo"): "dpo", ("align", "steerlm"): "steerlm"}


def _usage() -> str:
    names = {name: STAGE_TABLE[name][1] for name in available()}
    names.update({k: v[1] for k, v in EXTRA_COMMANDS.items()})
    width = max(len(c) for c in names)
    lines = ["usage: hf-minitron COMMAND [--config FILE.yaml] [--FIELD VALUE ...]", "",
             "Minitron-style pruning and distillation for Hugging Face causal LMs.", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in names.items()]
    lines += ["", "Run 'hf-minitron COMMAND --help' for a command's fields; --debug shows tracebacks."]
    return "\n".join(lines)


def expected_errors() -> tuple[type[BaseException], ...]:
    """Exceptions the CLI reports as one line (exit code 2): the library's own, and file/format errors it can
    attribute to an input."""
    from ..errors import MinitronError

    errors: list[type[BaseException]] = [MinitronError, FileNotFoundError, PermissionError, IsADirectoryError,
                                         NotADirectoryError, FileExistsError, json.JSONDecodeError,
                                         UnicodeDecodeError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover
        pass
    try:
        import yaml

        errors.append(yaml.YAMLError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def fail(command: str, message: str) -> int:
    print(f"hf-minitron {command}: error: {message}", file=sys.stderr)
    return 2


def parse_stage_config(name: str, argv: list[str]):
    """The stage's config from ``argv`` (flags and ``--config FILE.yaml``); ``--help`` lists the fields."""
    from transformers import HfArgumentParser

    from ..stages import get_stage
    from .yaml_config import read_stage_yaml

    spec = get_stage(name)
    parser = HfArgumentParser((spec.config_cls,), prog=f"hf-minitron {name}", description=spec.help)
    parser.add_argument("--config", default=None, help="YAML file of this command's fields (flags on the command "
                                                         "line win).")
    if "debug" not in {a.dest for a in parser._actions}:  # TrainingArguments has a `debug` field of its own
        parser.add_argument("--debug", action="store_true", help="Show the traceback of an error (or set "
                                                                  "HF_MINITRON_DEBUG=1).")
    args = list(argv)
    config_file = None
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            parser.error("--config needs a YAML file")
        config_file = args[i + 1]
        del args[i : i + 2]
    args = [a for a in args if a != "--debug"]
    if config_file is not None:
        parser.set_defaults(**read_stage_yaml(config_file, spec.config_cls, command=name))
        for action in parser._actions:  # a field the file sets is no longer required on the command line
            if action.dest in parser._defaults:
                action.required = False
    namespace, unknown = parser.parse_known_args(args=args)
    if unknown:
        from ..stages.base import config_fields

        flag = next((u for u in unknown if u.startswith("-")), unknown[0])
        close = suggest_field(flag, config_fields(spec.config_cls))
        parser.error(f"unrecognized argument {flag}" + (f"; did you mean --{close}?" if close else ""))
    values = {k: v for k, v in vars(namespace).items() if k not in ("config", "debug")}
    return spec.config_cls(**values)


def suggest_field(flag: str, fields) -> str | None:
    """The field closest to a mistyped ``--flag``, or ``None``."""
    import difflib

    name = flag.lstrip("-").split("=")[0].replace("-", "_")
    close = difflib.get_close_matches(name, list(fields), n=1, cutoff=0.6)
    return close[0] if close else None


def run_stage_command(name: str, argv: list[str]) -> int:
    """``hf-minitron NAME ...``: parse, run the stage, print its result."""
    from ..stages import get_stage

    config = parse_stage_config(name, argv)
    result = get_stage(name).run(config)
    print(result.to_json())
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Under torchrun / accelerate launch: leave the process group before exit (a gloo group torn down by the
    interpreter's exit can abort the process)."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    if argv[0] == "--version":
        from .. import __version__

        print(__version__)
        return 0
    if len(argv) > 1 and (argv[0], argv[1]) in ALIASES:
        argv = [ALIASES[(argv[0], argv[1])], *argv[2:]]
    name, rest = argv[0].replace("_", "-"), argv[1:]
    debug = "--debug" in rest or os.environ.get("HF_MINITRON_DEBUG", "") not in ("", "0")
    try:
        if name in EXTRA_COMMANDS:
            import importlib

            module = importlib.import_module(f"{__name__}.{EXTRA_COMMANDS[name][0]}")
            return int(module.main([a for a in rest if a != "--debug"]) or 0)
        if name not in available():
            from ..stages.base import suggest

            choices = [*available(), *EXTRA_COMMANDS]
            return fail(name, f"unknown command{suggest(name, choices)}; commands: {', '.join(choices)}")
        return run_stage_command(name, rest)
    except SystemExit as exc:  # argparse has printed its usage error (or --help)
        return exc.code if isinstance(exc.code, int) else 2
    except expected_errors() as err:
        if debug:
            raise
        return fail(name, _message(err))


def _message(err: BaseException) -> str:
    if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in str(err.args[-1]):
        return f"{err.filename}: {err.strerror or err}"
    if isinstance(err, (PermissionError, IsADirectoryError, NotADirectoryError)) and err.filename:
        return f"{err.filename}: {err.strerror}"
    if isinstance(err, json.JSONDecodeError):
        return f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}"
    return str(err)


if __name__ == "__main__":
    sys.exit(main())
