"""``hf-minitron`` command line: one subcommand per pipeline stage.

Each stage is a module in this package defining ``COMMAND`` (its name), ``HELP`` (one line), ``ORDER`` (its place
in the pipeline) and ``main(argv) -> int``. Modules keep heavy imports inside ``main`` so ``--help`` stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys


def commands() -> dict:
    """``{command name: module}`` in pipeline order."""
    mods = []
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            mod = importlib.import_module(f"{__name__}.{info.name}")
            if hasattr(mod, "COMMAND"):
                mods.append(mod)
    mods.sort(key=lambda m: (getattr(m, "ORDER", 100), m.COMMAND))
    return {m.COMMAND: m for m in mods}


def _usage(cmds) -> str:
    width = max(len(c) for c in cmds)
    lines = ["usage: hf-minitron COMMAND [options]", "", "Minitron-style pruning and distillation for Hugging Face causal LMs.", "", "commands:"]
    lines += [f"  {name:<{width}}  {mod.HELP}" for name, mod in cmds.items()]
    lines += ["", "Run 'hf-minitron COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmds = commands()
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage(cmds))
        return 0
    if argv[0] == "--version":
        from .. import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in cmds:
        print(f"hf-minitron: unknown command {name!r}; choose one of: {', '.join(cmds)}", file=sys.stderr)
        return 2
    return int(cmds[name].main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
