"""The ``card`` stage: render the model card (metadata, what was done, evaluation, plots) into a model folder.

With ``output_dir`` unset (or equal to ``model_dir``) the card is written into the model folder, each file atomically
(``README.md``, ``plots/*.png``, ``recipe.yaml``, ``eval.json``). With another ``output_dir`` (what the recipe runner
gives), that folder becomes a copy of the model (hard links where the file system allows) plus the card, written
atomically as a whole; it is the product the ``push`` stage uploads.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .base import StageResult, register_stage

#: Files of a model folder the card stage makes itself (not copied from the source folder).
CARD_FILES = ("README.md", "recipe.yaml", "eval.json")


@dataclass
class CardConfig:
    r"""Configuration of :func:`run_card`.

    > Parameters that control the model

        model_dir (`str`):
            The student's folder (a Hugging Face checkpoint).
        teacher (`str` or `None`, *optional*, defaults to `None`):
            The teacher (Hub id, folder, `"default"`); its Hub id becomes `base_model`. Default: the recipe's.
        model_name (`str` or `None`, *optional*, defaults to `None`):
            Title of the card (default: the repo name or the folder's name).
        repo_id (`str` or `None`, *optional*, defaults to `None`):
            The Hub repo the model goes to (shown in the usage snippet).

    > Parameters that control the metadata

        license (`str` or `None`, *optional*, defaults to `None`):
            License identifier (default: the teacher's, from its folder's card, a known teacher or the Hub). An
            unknown license is refused.
        license_name, license_link (`str` or `None`, *optional*, defaults to `None`):
            Required with `license="other"`.
        datasets (`list[str]`, *optional*, defaults to `[]`):
            Data used (Hub ids go into the metadata; all are named in the card). Default: the recipe's data.

    > Parameters that control what the card shows

        report (`str` or `None`, *optional*, defaults to `None`):
            The eval stage's folder (or its `eval.json`): evaluation table, model-index, bar chart.
        scores (`str` or `None`, *optional*, defaults to `None`):
            The importance stage's folder: importance heat map. Default: the run's importance stage.
        pipeline (`str` or `None`, *optional*, defaults to `None`):
            The recipe run folder (its stage markers and `recipe.json`) or a `pipeline.json`: the stages, their
            settings and tokens. Default: the model folder's parent when it is a recipe run folder.
        recipe (`str` or `None`, *optional*, defaults to `None`):
            The recipe YAML, shown and copied as `recipe.yaml` (credentials removed). Default: the run's.
        log_history (`str` or `None`, *optional*, defaults to `None`):
            `log_history.json` or `trainer_state.json` for the loss curve. Default: the model folder's, else the
            last checkpoint's in `MODEL_DIR.checkpoints`.
        template (`str`, *optional*, defaults to `"minitron"`):
            Card template: a name in `model_cards/` or a Markdown file.

    > Parameters that control the output

        output_dir (`str` or `None`, *optional*, defaults to `None`):
            Where the carded model goes (default: into `model_dir`).
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace a non-empty `output_dir`, or a `README.md` in `model_dir` that hf-minitron did not write.
    """

    model_dir: str | None = field(default=None, metadata={"help": "The student's folder (a Hugging Face checkpoint)."})
    output_dir: str | None = field(default=None, metadata={
        "help": "Where the carded model goes (default: into model_dir itself)."})
    teacher: str | None = field(default=None, metadata={
        "help": "The teacher (Hub id, folder or 'default'); its Hub id becomes base_model. Default: the recipe's."})
    license: str | None = field(default=None, metadata={
        "help": "License identifier (default: the teacher's); an unknown license is refused."})
    license_name: str | None = field(default=None, metadata={"help": "Short name of the license (license='other')."})
    license_link: str | None = field(default=None, metadata={"help": "Link to the license text (license='other')."})
    datasets: list[str] = field(default_factory=list, metadata={
        "help": "Data used (Hub ids go into the metadata). Default: the recipe's data."})
    report: str | None = field(default=None, metadata={"help": "The eval stage's folder or eval.json."})
    scores: str | None = field(default=None, metadata={"help": "The importance stage's folder (heat map)."})
    pipeline: str | None = field(default=None, metadata={
        "help": "Recipe run folder or pipeline.json (stages, settings, tokens). Default: model_dir's parent."})
    recipe: str | None = field(default=None, metadata={"help": "Recipe YAML to show and copy (credentials removed)."})
    log_history: str | None = field(default=None, metadata={
        "help": "log_history.json or trainer_state.json for the loss curve (default: found beside the model)."})
    repo_id: str | None = field(default=None, metadata={"help": "Hub repo the model goes to (usage snippet)."})
    model_name: str | None = field(default=None, metadata={"help": "Title of the card."})
    template: str = field(default="minitron", metadata={"help": "Template name in model_cards/ or a .md file."})
    overwrite: bool = field(default=False, metadata={
        "help": "Replace a non-empty output_dir, or a README.md in model_dir that hf-minitron did not write."})

    def __post_init__(self):
        if not self.model_dir:
            raise ConfigError("model_dir is not set: give the student's folder (--model_dir DIR)")
        if self.license is not None and self.license.strip() in ("", "unknown"):
            raise ConfigError(f"license={self.license!r}: give a real license identifier (e.g. apache-2.0); a model "
                              "whose license is unknown is not published")

    def in_place(self) -> bool:
        return self.output_dir is None or _same(self.output_dir, self.model_dir)


def _same(a, b) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


@dataclass
class CardResult(StageResult):
    """``metrics``: ``readme``, ``plots`` (kind -> path), ``license``, ``base_model``, ``model_index_results``,
    ``product`` (the carded model folder)."""


def link_model_files(source: Path, target: Path) -> None:
    """Hard-link (or copy) every file of ``source`` into ``target``, except the card's own files."""
    for path in source.rglob("*"):
        rel = path.relative_to(source)
        if rel.parts[0] in CARD_FILES or rel.parts[0] == "plots" or rel.name.startswith("."):
            continue
        dest = target / rel
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(path, dest)


@register_stage("card", config=CardConfig,
                inputs={"model_dir": "student", "report": "report", "scores": "scores", "teacher": "teacher"},
                produces="student")
def run_card(config: CardConfig) -> CardResult:
    """Render the card of ``config.model_dir`` and write it (see the module docstring).

    Everything is read and checked before anything is written: the model folder, the output location, the license,
    the report, scores, pipeline, recipe and log history."""
    from ..card import CARD_MARKER, gather_facts, write_card_files
    from ..loading import check_model_source
    from ..outputs import atomic_output_dir, check_output_dir

    check_model_source(config.model_dir, role="model_dir", need_adapter=False)
    model_dir = Path(config.model_dir).expanduser().resolve()
    readme = model_dir / "README.md"
    if config.in_place():
        if readme.is_file() and CARD_MARKER not in readme.read_text(encoding="utf-8", errors="replace") \
                and not config.overwrite:
            raise ConfigError(f"model_dir {model_dir} already has a README.md that hf-minitron did not write; set "
                              "overwrite to replace it, or give an output_dir")
    else:
        check_output_dir(config.output_dir, overwrite=config.overwrite, name="output_dir", fix="set overwrite (--overwrite)")
    facts = gather_facts(
        model_dir, teacher=config.teacher, license=config.license, license_name=config.license_name,
        license_link=config.license_link, datasets=config.datasets, report=config.report, scores=config.scores,
        pipeline=config.pipeline, recipe=config.recipe, log_history=config.log_history, repo_id=config.repo_id,
        model_name=config.model_name)
    if config.in_place():
        out = model_dir
        written = write_card_files(facts, out, template=config.template)
    else:
        with atomic_output_dir(config.output_dir, overwrite=config.overwrite, name="output_dir",
                               fix="set overwrite (--overwrite)") as tmp:
            link_model_files(model_dir, tmp)
            written = write_card_files(facts, tmp, template=config.template)
        out = Path(config.output_dir).expanduser().resolve()
    data = written["card"].data
    metrics = {"readme": str(out / "README.md"), "license": facts.license, "base_model": data.base_model,
               "model_index_results": len(data.eval_results or []),
               "plots": {k: str(out / v) for k, v in written["plots"].items()}, "product": str(out)}
    return CardResult(stage="card", output_dir=str(out), metrics=metrics)
