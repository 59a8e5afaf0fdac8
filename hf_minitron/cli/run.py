"""``hf-minitron run RECIPE.yaml [--STAGE.FIELD VALUE ...]``: the shell over :func:`hf_minitron.recipe.run_recipe`."""

from __future__ import annotations

import argparse

HELP = "Run a recipe (YAML): the whole pipeline, resumable; completed stages are skipped."
EPILOG = """overrides: any recipe field on the command line, e.g.
  --distill.max_steps 100   --prune.intermediate_size 768   --teacher path/to/model   --output_dir outputs/x
values are read as YAML (100 is a number, [1, 2] a list, true a boolean)."""


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """``(plain arguments, ["stage.field=value", ...])``: every ``--a.b VALUE`` / ``--a.b=VALUE`` is an override."""
    plain, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        key = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
        if "." in key or key in ("teacher", "data", "name"):
            if "=" in arg:
                overrides.append(arg[2:])
            elif i + 1 < len(argv):
                overrides.append(f"{key}={argv[i + 1]}")
                i += 1
            else:
                raise SystemExit(f"hf-minitron run: {arg} needs a value")
        else:
            plain.append(arg)
        i += 1
    return plain, overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hf-minitron run", description=HELP, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="recipe YAML file (see recipes/demo.yaml)")
    parser.add_argument("--output_dir", "--output-dir", default=None, help="run directory (default: the recipe's)")
    parser.add_argument("--from", dest="from_stage", default=None, help="rerun this stage and every later one")
    parser.add_argument("--overwrite", action="store_true",
                        help="take over an output_dir that holds something else (another recipe's run)")
    parser.add_argument("--dry_run", "--dry-run", action="store_true",
                        help="validate the recipe and print the plan; run nothing")
    plain, overrides = split_overrides(list(argv or []))
    args = parser.parse_args(plain)

    from ..recipe import load_recipe, run_recipe, validate_recipe

    recipe = load_recipe(args.recipe, overrides=overrides, output_dir=args.output_dir)
    if args.dry_run:
        for stage in validate_recipe(recipe):
            print(f"{stage.label}: {stage.output_dir}  {stage.fields}")
        return 0
    run_recipe(recipe, from_stage=args.from_stage, overwrite=args.overwrite)
    return 0
