"""The model card of a pruned and distilled student: metadata the Hub indexes, a body that shows what was done, plots.

Rendered from ``model_cards/minitron.md`` through ``huggingface_hub.ModelCard.from_template``. Metadata
(``ModelCardData``): ``base_model`` = the teacher's Hub id, ``base_model_relation: finetune`` (the Hub has no
"pruned" relation), ``library_name: transformers``, tags ``pruned``/``distillation``/``minitron``/the family,
``license`` (the teacher's; an unknown license is refused, see :func:`resolve_license`), ``datasets`` (the Hub ids
among the data used), and the student's evaluation results as ``model-index`` entries.

Where the facts come from, each optional: the model folder (``config.json``; ``log_history.json`` written by the
distill stage, or a ``trainer_state.json`` there or in ``FOLDER.checkpoints/checkpoint-*``), the eval stage's
``eval.json``, the importance stage's scores, and the recipe run (``pipeline``: a ``pipeline.json`` with
``{"stages": [{"name", "config", "metrics"}]}``, or a recipe run folder whose ``NN-stage.done`` markers and
``recipe.json`` the runner writes). Plots (matplotlib, Agg) go to ``plots/*.png`` beside ``README.md``.

:func:`render_card` returns the card (plots named, not drawn); :func:`write_card` draws the plots and writes every
file atomically; ``DistillationTrainer.create_model_card`` can call :func:`write_card` with its log history.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, DataError
from .outputs import replace_file

TEMPLATES = Path(__file__).resolve().parent / "model_cards"
if not TEMPLATES.is_dir():  # running from a source checkout: model_cards/ sits beside the package
    TEMPLATES = Path(__file__).resolve().parent.parent / "model_cards"
PLOTS_DIR = "plots"
RECIPE_COPY = "recipe.yaml"
CARD_MARKER = "<!-- hf-minitron model card -->"

#: License identifiers the Hub accepts in ``license:`` (https://huggingface.co/docs/hub/repositories-licenses).
HUB_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5
cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0
cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0
cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl
lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl openrail++
osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license fair-noncommercial-research-license
llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma other
""".split())

#: Teachers whose Hub id and license are known without a network call.
KNOWN_TEACHERS = {
    "default": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "smollm2": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "SmolLM2-135M-Instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
}

MINITRON_PAPERS = (
    {"title": "Compact Language Models via Pruning and Knowledge Distillation", "id": "2407.14679",
     "citation": "@article{muralidharan2024compact,\n  title   = {Compact Language Models via Pruning and Knowledge "
                 "Distillation},\n  author  = {Saurav Muralidharan and Sharath Turuvekere Sreenivas and Raviraj "
                 "Joshi and Marcin Chochowski and Mostofa Patwary and Mohammad Shoeybi and Bryan Catanzaro and Jan "
                 "Kautz and Pavlo Molchanov},\n  journal = {arXiv preprint arXiv:2407.14679},\n  year    = {2024}\n}"},
    {"title": "LLM Pruning and Distillation in Practice: The Minitron Approach", "id": "2408.11796",
     "citation": "@article{sreenivas2024llm,\n  title   = {LLM Pruning and Distillation in Practice: The Minitron "
                 "Approach},\n  author  = {Sharath Turuvekere Sreenivas and Saurav Muralidharan and Raviraj Joshi and "
                 "Marcin Chochowski and Mostofa Patwary and Mohammad Shoeybi and Bryan Catanzaro and Jan Kautz and "
                 "Pavlo Molchanov},\n  journal = {arXiv preprint arXiv:2408.11796},\n  year    = {2024}\n}"},
)
#: Recipe keys never copied into a card or a pushed recipe (credentials).
_SECRET_KEY = re.compile(r"(^|_)(token|password|secret)$", re.I)
#: Stage metrics that count tokens, by stage.
_TOKEN_METRICS = ("train_tokens", "tokens", "new_tokens", "tokens_seen")


# --- the facts ---------------------------------------------------------------------------------------------------
@dataclass
class CardFacts:
    """Everything a card shows, read from files (see the module docstring)."""

    model_dir: Path
    config: dict
    teacher: str
    teacher_id: str | None
    license: str
    license_source: str
    datasets: list[str] = field(default_factory=list)
    report: dict | None = None
    scores_dir: Path | None = None
    stages: list[dict] = field(default_factory=list)
    recipe: dict | None = None
    log_history: list[dict] = field(default_factory=list)
    repo_id: str | None = None
    model_name: str | None = None
    license_name: str | None = None
    license_link: str | None = None


def hub_id(source: str | None) -> str | None:
    """The Hub id of a model source, or ``None`` for a local path or an unknown name."""
    if source is None:
        return None
    if source in KNOWN_TEACHERS:
        return KNOWN_TEACHERS[source][0]
    from .data import RECORD_SUFFIXES, TEXT_SUFFIXES

    looks_like_file = source.lower().endswith((".gguf", *TEXT_SUFFIXES, *RECORD_SUFFIXES))
    if Path(source).expanduser().exists() or source.startswith((".", "/", "~")) or looks_like_file:
        return None
    return source if re.fullmatch(r"[\w.-]+/[\w.-]+", source) else None


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{what} {path} cannot be read as JSON ({err}); fix or remove it") from None


def _license_of_folder(folder: Path) -> str | None:
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    from huggingface_hub import ModelCard

    return ModelCard.load(readme).data.get("license")


def resolve_license(license: str | None, teacher: str, *, license_name: str | None = None,
                    license_link: str | None = None) -> tuple[str, str]:
    """``(license, where it came from)``: the one given, else the teacher's (its folder's card, or a known teacher,
    or the Hub's card when online). An unknown license is refused: publishing needs one."""
    source = "set by the user"
    if license is None:
        folder = Path(teacher).expanduser()
        found = _license_of_folder(folder) if folder.is_dir() else None
        if found is None and teacher in KNOWN_TEACHERS:
            found = KNOWN_TEACHERS[teacher][1]
        if found is None and hub_id(teacher):
            found = _hub_license(hub_id(teacher))
        license, source = found, "the teacher's"
    if license in (None, "", "unknown"):
        raise ConfigError(f"license: the teacher's license is unknown (teacher={teacher!r}); a model whose license "
                          "is unknown is not published: set license to the teacher's license (e.g. --license "
                          "apache-2.0)")
    if license not in HUB_LICENSES:
        from .stages.base import suggest

        raise ConfigError(f"license={license!r} is not a license identifier the Hub knows{suggest(license, HUB_LICENSES)}"
                          "; use one from https://huggingface.co/docs/hub/repositories-licenses, or 'other' with "
                          "license_name and license_link")
    if license == "other" and not (license_name and license_link):
        raise ConfigError("license='other' needs license_name and license_link (the license's short name and a link "
                          "to its text)")
    return license, source


def _hub_license(repo: str) -> str | None:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        from huggingface_hub import model_info

        info = model_info(repo)
        return (info.card_data or {}).get("license")
    except Exception:  # offline, gated, missing: the license stays unknown and the user is asked for it
        return None


def read_log_history(model_dir: Path, path: str | None = None) -> list[dict]:
    """The Trainer's log history: ``path`` (a ``log_history.json`` or ``trainer_state.json``), else the model
    folder's, else the last checkpoint's in ``MODEL_DIR.checkpoints``; ``[]`` when there is none."""
    candidates = [Path(path).expanduser()] if path else [model_dir / "log_history.json",
                                                          model_dir / "trainer_state.json"]
    if not path:
        checkpoints = Path(f"{model_dir}.checkpoints")
        steps = sorted(checkpoints.glob("checkpoint-*/trainer_state.json"),
                       key=lambda p: int(p.parent.name.split("-")[-1]) if p.parent.name.split("-")[-1].isdigit() else -1)
        candidates += steps[-1:]
    for candidate in candidates:
        if candidate.is_file():
            data = _read_json(candidate, "log history")
            history = data.get("log_history") if isinstance(data, dict) else data
            if not isinstance(history, list):
                raise DataError(f"log history {candidate} holds no list of log entries; give a log_history.json or "
                                "trainer_state.json")
            return [h for h in history if isinstance(h, dict)]
    if path:
        raise DataError(f"log_history={path!r} does not exist; give a log_history.json or trainer_state.json")
    return []


def read_pipeline(pipeline: str | None, model_dir: Path) -> tuple[list[dict], dict | None]:
    """``(stages, recipe)`` of the run that made the model: ``pipeline`` (a JSON file or a recipe run folder), else
    the model folder's parent when it is a recipe run folder. Each stage: ``{"name", "config", "metrics"}``."""
    if pipeline is None:
        root = model_dir.parent
        if not any(root.glob("[0-9][0-9]-*.done")):
            return [], None
    else:
        root = Path(pipeline).expanduser()
        if not root.exists():
            raise DataError(f"pipeline={pipeline!r} does not exist; give the recipe run's folder or its pipeline.json")
    if root.is_file():
        data = _read_json(root, "pipeline")
        stages = [{"name": s.get("name") or s.get("stage"), "config": s.get("config") or {},
                   "metrics": s.get("metrics") or (s.get("result") or {}).get("metrics") or {}}
                  for s in data.get("stages", [])]
        return stages, data.get("recipe")
    stages = []
    for marker in sorted(root.glob("[0-9][0-9]-*.done")):
        data = _read_json(marker, "stage marker")
        stages.append({"name": data.get("stage"), "config": data.get("config") or {},
                       "metrics": (data.get("result") or {}).get("metrics") or {}, "seconds": data.get("seconds")})
    recipe = _read_json(root / "recipe.json", "recipe") if (root / "recipe.json").is_file() else None
    return stages, recipe


def read_recipe(path: str | None) -> dict | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"recipe={path!r} does not exist; give the recipe YAML the run used")
    import yaml

    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise DataError(f"recipe {p} is not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise DataError(f"recipe {p} is not a mapping of recipe keys")
    return data


def scrub_secrets(obj):
    """``obj`` without any key that names a credential (``hub_token``, ``token``, ``*_password``, ...)."""
    if isinstance(obj, dict):
        return {k: scrub_secrets(v) for k, v in obj.items() if not _SECRET_KEY.search(str(k))}
    if isinstance(obj, list):
        return [scrub_secrets(v) for v in obj]
    return obj


def gather_facts(model_dir, *, teacher=None, license=None, license_name=None, license_link=None, datasets=(),
                 report=None, scores=None, pipeline=None, recipe=None, log_history=None, repo_id=None,
                 model_name=None) -> CardFacts:
    """Read everything the card shows; every problem is a :class:`ConfigError`/:class:`DataError` naming the input."""
    from .evaluation.report import read_report

    folder = Path(model_dir).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model_dir={str(model_dir)!r} holds no config.json, so no model; give the student's folder")
    config = _read_json(folder / "config.json", "model config")
    stages, run_recipe = read_pipeline(pipeline, folder)
    recipe_data = read_recipe(recipe) or run_recipe
    teacher = teacher or (recipe_data or {}).get("teacher")
    if not teacher:
        raise ConfigError("teacher is not set and no recipe names it; give the teacher's Hub id or path (--teacher)")
    lic, lic_source = resolve_license(license, str(teacher), license_name=license_name, license_link=license_link)
    used = list(datasets) or [d for d in [(recipe_data or {}).get("data")] if d]
    scores_dir = Path(scores).expanduser() if scores else next(
        (Path(s["metrics"]["product"]) for s in stages if s["name"] == "importance" and "product" in s["metrics"]), None)
    if scores_dir is None:
        scores_dir = next((Path(s["config"]["output_dir"]) for s in stages
                           if s["name"] == "importance" and s["config"].get("output_dir")), None)
    return CardFacts(model_dir=folder, config=config, teacher=str(teacher), teacher_id=hub_id(str(teacher)),
                     license=lic, license_source=lic_source, datasets=[str(d) for d in used],
                     report=read_report(report) if report else None,
                     scores_dir=scores_dir if scores_dir and scores_dir.is_dir() else None, stages=stages,
                     recipe=scrub_secrets(recipe_data) if recipe_data else None,
                     log_history=read_log_history(folder, log_history), repo_id=repo_id, model_name=model_name,
                     license_name=license_name, license_link=license_link)


# --- metadata -----------------------------------------------------------------------------------------------------
def _dataset_label(path: str) -> tuple[str, str]:
    """``(dataset_type, dataset_name)`` for model-index: a Hub id as it is, a local file by its name."""
    return (path, path) if hub_id(path) else (Path(path).name, Path(path).name)


def eval_results(report: dict | None) -> list:
    """The student's figures as ``huggingface_hub.EvalResult`` entries (model-index)."""
    from huggingface_hub import EvalResult

    if not report:
        return []
    student = next((m for m in report["models"] if m["role"] == "student"), None)
    if student is None:
        return []
    out = []
    source = {"source_name": "hf-minitron eval", "source_url": "https://github.com/hf-minitron/hf-minitron"}
    if "perplexity" in student:
        ds_type, ds_name = _dataset_label(report["settings"]["perplexity"]["data"])
        out.append(EvalResult(task_type="text-generation", task_name="Text Generation", dataset_type=ds_type,
                              dataset_name=ds_name, metric_type="perplexity", metric_name="Perplexity",
                              metric_value=round(student["perplexity"]["perplexity"], 4),
                              metric_args={"seq_len": report["settings"]["perplexity"]["seq_len"],
                                           "add_bos": report["settings"]["perplexity"]["add_bos"]}, **source))
    if "toolcall" in student:
        ds_type, ds_name = _dataset_label(report["settings"]["toolcall"]["data"])
        for metric in ("valid_call_rate", "name_match_rate"):
            out.append(EvalResult(task_type="text-generation", task_name="Function calling", dataset_type=ds_type,
                                  dataset_name=ds_name, metric_type=metric, metric_name=metric.replace("_", " "),
                                  metric_value=round(student["toolcall"][metric], 4), **source))
    for task, metrics in (student.get("lm_eval") or {}).items():
        if task.startswith("_"):
            continue
        for metric, value in metrics.items():
            out.append(EvalResult(task_type="text-generation", dataset_type=task, dataset_name=task,
                                  metric_type=metric, metric_value=round(float(value), 4),
                                  source_name="lm-evaluation-harness",
                                  source_url="https://github.com/EleutherAI/lm-evaluation-harness"))
    return out


def card_data(facts: CardFacts):
    """The card's ``ModelCardData`` (see the module docstring)."""
    from huggingface_hub import ModelCardData

    family = facts.config.get("model_type")
    tags = ["pruned", "distillation", "minitron", "hf-minitron"] + ([family] if family else [])
    extra = {}
    if facts.license == "other":
        extra = {"license_name": facts.license_name, "license_link": facts.license_link}
    results = eval_results(facts.report)
    return ModelCardData(
        base_model=facts.teacher_id, base_model_relation="finetune" if facts.teacher_id else None,
        library_name="transformers", pipeline_tag="text-generation", license=facts.license, tags=tags,
        datasets=[d for d in facts.datasets if hub_id(d)] or None,
        model_name=(facts.model_name or facts.repo_id or facts.model_dir.name) if results else None,
        eval_results=results or None, **extra)


# --- body ---------------------------------------------------------------------------------------------------------
_ARCH_ROWS = (("layers", "num_hidden_layers"), ("hidden size", "hidden_size"), ("attention heads", "num_attention_heads"),
              ("KV heads", "num_key_value_heads"), ("MLP intermediate size", "intermediate_size"),
              ("vocabulary", "vocab_size"))
_SUMMARY_KEYS = {"num_hidden_layers": "layers", "hidden_size": "hidden_size", "num_attention_heads": "num_attention_heads",
                 "num_key_value_heads": "num_key_value_heads", "intermediate_size": "intermediate_size",
                 "vocab_size": "vocab_size"}


def _teacher_sizes(facts: CardFacts) -> dict | None:
    prune = next((s for s in facts.stages if s["name"] == "prune"), None)
    if prune and isinstance(prune["metrics"].get("before"), dict):
        before = prune["metrics"]["before"]
        return {key: before.get(summary) for key, summary in _SUMMARY_KEYS.items()} | {
            "parameters": before.get("parameters")}
    folder = Path(facts.teacher).expanduser()
    if (folder / "config.json").is_file():
        return _read_json(folder / "config.json", "teacher config")
    return None


def architecture_table(facts: CardFacts) -> str:
    teacher = _teacher_sizes(facts)
    params = {m["role"]: m["parameters"] for m in (facts.report or {}).get("models", [])}
    head = "| | teacher | this model |\n|---|---|---|" if teacher else "| | this model |\n|---|---|"
    rows = []
    for label, key in _ARCH_ROWS:
        value = facts.config.get(key)
        rows.append(f"| {label} | {teacher.get(key, '–')} | {value} |" if teacher else f"| {label} | {value} |")
    t_params = params.get("teacher") or (teacher or {}).get("parameters")
    if "student" in params or t_params:
        s = f"{params['student']:,}" if "student" in params else "–"
        rows.append(f"| parameters | {t_params:,} | {s} |" if teacher and t_params else f"| parameters | {s} |")
    return head + "\n" + "\n".join(rows)


def _fmt_config(config: dict) -> str:
    shown = {k: v for k, v in config.items() if v not in (None, [], {}, "") and k not in ("output_dir",
                                                                                        "checkpoint_dir")}
    return ", ".join(f"`{k}={json.dumps(v)}`" for k, v in list(shown.items())[:12])


def pipeline_steps(facts: CardFacts) -> str:
    if not facts.stages:
        return (f"Pruned from {_teacher_ref(facts)} and distilled from it with hf-minitron (no record of the run's "
                "stages was given to the card).")
    lines = []
    for i, stage in enumerate(facts.stages, 1):
        key = {k: v for k, v in stage["metrics"].items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        figures = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in list(key.items())[:5])
        line = f"{i}. **{stage['name']}**" + (f": {figures}" if figures else "")
        if stage.get("config"):
            line += f"<br>settings: {_fmt_config(stage['config'])}"
        lines.append(line)
    return "\n".join(lines)


def tokens_table(facts: CardFacts) -> str:
    rows = []
    for stage in facts.stages:
        tokens = next((stage["metrics"][k] for k in _TOKEN_METRICS if stage["metrics"].get(k)), None)
        if tokens:
            rows.append(f"| {stage['name']} | {int(tokens):,} |")
    if not rows and facts.log_history:
        seen = max((h.get("num_input_tokens_seen", 0) for h in facts.log_history), default=0)
        if seen:
            rows.append(f"| distill | {int(seen):,} |")
    return "| stage | tokens |\n|---|---|\n" + "\n".join(rows) if rows else ""


def reproduce_section(facts: CardFacts) -> str:
    if not facts.recipe:
        return ""
    import yaml

    recipe = {k: v for k, v in facts.recipe.items() if k != "source"}
    text = yaml.safe_dump(recipe, sort_keys=False, default_flow_style=False).strip()
    return (f"Save this recipe as `recipe.yaml` (it is also in this repository) and run `hf-minitron run "
            f"recipe.yaml`:\n\n```yaml\n{text}\n```")


def evaluation_section(facts: CardFacts) -> str:
    if not facts.report:
        return "Not evaluated by hf-minitron (no eval report was given to the card)."
    from .evaluation.report import markdown_table

    settings = facts.report["settings"]
    notes = []
    if "perplexity" in settings:
        p = settings["perplexity"]
        notes.append(f"perplexity: `{p['data']}`, {p['documents']} documents, windows of {p['seq_len']} tokens "
                     f"({p['num_windows'] or 'all'} windows), BOS prepended: {'yes' if p['add_bos'] else 'no'}")
    if "throughput" in settings:
        t = settings["throughput"]
        notes.append(f"speed: {len(t['prompts'])} prompts, {t['max_new_tokens']} new tokens each, greedy, batch 1, "
                     f"{t['device']} {t['dtype']}" + (f", {t['torch_threads']} threads" if t.get("torch_threads") else ""))
    if "toolcall" in settings:
        notes.append(f"tool calls: {settings['toolcall']['turns']} function-call turns of `{settings['toolcall']['data']}`")
    text = markdown_table(facts.report) + "\n\n" + "\n".join(f"- {n}" for n in notes + facts.report.get("notes", []))
    return text


def _teacher_ref(facts: CardFacts) -> str:
    return (f"[{facts.teacher_id}](https://huggingface.co/{facts.teacher_id})" if facts.teacher_id
            else f"`{facts.teacher}`")


def citations() -> str:
    return "\n\n".join(f"```bibtex\n{p['citation']}\n```" for p in MINITRON_PAPERS)


def template_path(template: str) -> Path:
    """``template``: a name in ``model_cards/`` (``"minitron"``) or a path to a Markdown template."""
    path = Path(template).expanduser()
    if path.suffix == ".md" and path.is_file():
        return path
    named = TEMPLATES / f"{template}.md"
    if not named.is_file():
        shipped = sorted(p.stem for p in TEMPLATES.glob("*.md"))
        raise ConfigError(f"template={template!r} is neither a file nor a template in {TEMPLATES} ({shipped})")
    return named


def render_card(facts: CardFacts, *, plots: dict[str, str] | None = None, template: str = "minitron"):
    """The ``huggingface_hub.ModelCard`` of ``facts``; ``plots`` maps ``importance``/``loss``/``metrics`` to the
    PNG paths (relative to the card) to show."""
    from huggingface_hub import ModelCard

    plots = plots or {}
    name = facts.model_name or (facts.repo_id.split("/")[-1] if facts.repo_id else facts.model_dir.name)
    card = ModelCard.from_template(
        card_data(facts), template_path=str(template_path(template)), model_name=name,
        teacher_ref=_teacher_ref(facts), architecture_table=architecture_table(facts),
        pipeline_steps=pipeline_steps(facts), tokens_table=tokens_table(facts), reproduce=reproduce_section(facts),
        evaluation=evaluation_section(facts), importance_plot=plots.get("importance"), loss_plot=plots.get("loss"),
        metrics_plot=plots.get("metrics"), repo_id=facts.repo_id or f"YOUR_ORG/{name}", license=facts.license,
        license_source=facts.license_source, citations=citations())
    card.text = card.text.rstrip() + f"\n\n{CARD_MARKER}\n"
    return card


# --- plots ----------------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_importance(scores_dir: Path, out: Path, *, groups: int = 32) -> None:
    """Heat maps: importance per layer x head, and per layer x group of MLP neurons (mean over each group)."""
    from safetensors.torch import load_file

    from .importance import SCORES_FILE

    t = load_file(str(scores_dir / SCORES_FILE))
    heads, neurons = t["heads"].float(), t["neurons"].float()
    g = min(groups, neurons.shape[1])
    width = neurons.shape[1] // g
    grouped = neurons[:, : g * width].reshape(neurons.shape[0], g, width).mean(-1)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.25 * heads.shape[0] + 2.5), constrained_layout=True)
    for ax, data, title, xlabel in ((axes[0], heads, "attention heads", "head"),
                                    (axes[1], grouped, f"MLP neurons ({width} per group)", "neuron group")):
        image = ax.imshow(data.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set(title=f"Importance: {title}", xlabel=xlabel, ylabel="layer")
        fig.colorbar(image, ax=ax)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_loss(log_history: list[dict], out: Path) -> bool:
    """Training loss (and eval loss, when logged) against the optimizer step; ``False`` when there is none."""
    series = {}
    for key in ("loss", "eval_loss"):
        points = [(h["step"], h[key]) for h in log_history if key in h and "step" in h]
        if points:
            series[key] = points
    if not series:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for key, points in series.items():
        ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, label={"loss": "training loss",
                                                                                "eval_loss": "eval loss"}[key])
    ax.set(title="Distillation loss", xlabel="optimizer step", ylabel="loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


_BARS = (("parameters (M)", ("parameters",), 1e-6), ("perplexity", ("perplexity", "perplexity"), 1),
         ("tokens/s", ("throughput", "tokens_per_s"), 1), ("first-token latency (ms)",
                                                           ("throughput", "first_token_latency_s"), 1e3),
         ("tool calls valid (%)", ("toolcall", "valid_call_rate"), 100))


def plot_metrics(report: dict, out: Path) -> bool:
    """Teacher vs student bars, one panel per figure both have; ``False`` without a teacher and a student."""
    from .evaluation.report import _get

    roles = {m["role"]: m for m in report["models"]}
    if "teacher" not in roles or "student" not in roles:
        return False
    panels = [(label, _get(roles["teacher"], path) * k, _get(roles["student"], path) * k) for label, path, k in _BARS
              if _get(roles["teacher"], path) is not None and _get(roles["student"], path) is not None]
    if not panels:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.2), constrained_layout=True, squeeze=False)
    for ax, (label, t, s) in zip(axes[0], panels):
        bars = ax.bar(["teacher", "student"], [t, s], color=["#9aa5b1", "#3b7dd8"])
        ax.bar_label(bars, fmt="%.3g")
        ax.set_ylim(0, max(t, s, 1e-9) * 1.15)  # room for the labels; bars start at zero
        ax.set_title(label, fontsize=10)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def draw_plots(facts: CardFacts, out_dir: Path) -> dict[str, str]:
    """Draw the plots the facts allow into ``out_dir/plots``; ``{kind: relative path}``."""
    target = out_dir / PLOTS_DIR
    target.mkdir(parents=True, exist_ok=True)
    drawn = {}
    if facts.scores_dir is not None:
        plot_importance(facts.scores_dir, target / "importance.png")
        drawn["importance"] = f"{PLOTS_DIR}/importance.png"
    if facts.log_history and plot_loss(facts.log_history, target / "distillation_loss.png"):
        drawn["loss"] = f"{PLOTS_DIR}/distillation_loss.png"
    if facts.report and plot_metrics(facts.report, target / "teacher_vs_student.png"):
        drawn["metrics"] = f"{PLOTS_DIR}/teacher_vs_student.png"
    if not drawn:
        target.rmdir()
    return drawn


# --- writing --------------------------------------------------------------------------------------------------------
def write_card_files(facts: CardFacts, out_dir: Path, *, template: str = "minitron") -> dict:
    """Draw the plots, render the card and write ``README.md`` (+ ``recipe.yaml``, ``eval.json``) into ``out_dir``,
    each file atomically. Returns ``{"readme", "plots", "files"}``."""
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory() as scratch:  # draw off to the side, then move each file into place
        drawn = draw_plots(facts, Path(scratch))
        card = render_card(facts, plots=drawn, template=template)
        written = []
        for rel in drawn.values():
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            replace_file(out_dir / rel, (Path(scratch) / rel).read_bytes())
            written.append(rel)
    if facts.recipe:
        recipe = {k: v for k, v in facts.recipe.items() if k != "source"}
        replace_file(out_dir / RECIPE_COPY, yaml.safe_dump(recipe, sort_keys=False).encode())
        written.append(RECIPE_COPY)
    if facts.report:
        replace_file(out_dir / "eval.json", (json.dumps(facts.report, indent=2) + "\n").encode())
        written.append("eval.json")
    replace_file(out_dir / "README.md", str(card).encode("utf-8"))
    written.append("README.md")
    return {"readme": str(out_dir / "README.md"), "plots": drawn, "files": written, "card": card}


def write_card(model_dir, out_dir=None, *, template: str = "minitron", log_history: list[dict] | None = None,
               **facts_kwargs) -> Path:
    """Render and write the card of ``model_dir`` into ``out_dir`` (default: the model folder itself), each file
    atomically; ``log_history`` (e.g. ``trainer.state.log_history``) replaces the one read from files. The entry point
    for ``DistillationTrainer.create_model_card``."""
    facts = gather_facts(model_dir, **facts_kwargs)
    if log_history is not None:
        facts.log_history = [h for h in log_history if isinstance(h, dict)]
    out = Path(out_dir or model_dir).expanduser()
    write_card_files(facts, out, template=template)
    return out / "README.md"


__all__ = ["CARD_MARKER", "CardFacts", "HUB_LICENSES", "KNOWN_TEACHERS", "MINITRON_PAPERS", "card_data",
           "draw_plots", "eval_results", "gather_facts", "hub_id", "read_log_history", "read_pipeline",
           "render_card", "resolve_license", "scrub_secrets", "write_card", "write_card_files"]
