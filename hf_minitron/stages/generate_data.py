"""The ``generate-data`` stage: sample a teacher's answers to prompts into a chat JSONL training set.

The product is ``OUTPUT_DIR/data.jsonl`` (the result's ``output_dir`` and ``metrics["data_file"]`` name that file, so
the next stage's ``data`` field takes it as it is) plus ``OUTPUT_DIR/manifest.json``. An unfinished run keeps its
answers in ``checkpoint_dir``; running the same command again resumes it, and a finished ``output_dir`` with the
same settings is returned without loading the model. File formats and numerics: :mod:`hf_minitron.generate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import ConfigError
from .base import StageResult, register_stage


@dataclass
class GenerateDataConfig:
    r"""Configuration of :func:`run_generate_data`.

    > Parameters that control the model

        model (`str`, *optional*, defaults to `"default"`):
            Teacher that answers: a Hub id, a local directory or a `.gguf` file (`"default"`: the embedded
            SmolLM2-135M-Instruct).
        dtype (`Literal["float32", "bfloat16", "float16"]`, *optional*, defaults to `"float32"`):
            dtype the model generates in.
        device (`str` or `None`, *optional*, defaults to `None`):
            Device to generate on; default: this process's accelerator (`cuda:LOCAL_RANK`) or the CPU.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow the model's own code from the Hub.

    > Parameters that control the prompts

        prompts (`str`, *optional*, defaults to `"builtin"`):
            `"builtin"` (2,533 varied instructions, questions and passage tasks shipped with the package, in
            a fixed shuffled order) or a prompt source: `.txt` (one prompt per line), `.jsonl`/`.json`/`.parquet`/
            `.csv` records, a saved dataset directory or a `datasets` name.
        prompt_field (`str`, *optional*, defaults to `"prompt"`):
            Record field holding the prompt: a string or a list of chat messages (Alpaca `instruction`/`input`
            records are read without it).
        num_prompts (`int` or `None`, *optional*, defaults to `None`):
            Use only the first N prompts (all by default).
        system_prompt (`str` or `None`, *optional*, defaults to `None`):
            System turn put before every prompt (default: none, so the chat template's own default applies).
        use_chat_template (`bool`, *optional*, defaults to `True`):
            Render prompts with the tokenizer's chat template; off feeds the prompt text as it is (base models).

    > Parameters that control sampling

        max_new_tokens (`int`, *optional*, defaults to `256`):
            Most tokens per answer.
        temperature (`float`, *optional*, defaults to `0.7`):
            Sampling temperature; `0` decodes greedily.
        top_p (`float`, *optional*, defaults to `0.9`):
            Nucleus sampling: draw from the smallest set of tokens holding this much probability (`1`: all).
        seed (`int`, *optional*, defaults to `0`):
            Seed of the draws; each prompt gets its own stream from (seed, prompt index), so an answer does not
            depend on the batch, the number of processes or a resume.
        batch_size (`int`, *optional*, defaults to `16`):
            Prompts per `generate` call (prompts of similar length are batched together). Not a setting of the data:
            it may change between a run and its resume.

    > Parameters that control the output

        output_dir (`str`):
            Directory for `data.jsonl` (chat `messages` records in prompt order) and `manifest.json`, written
            atomically when every prompt is answered.
        checkpoint_dir (`str` or `None`, *optional*, defaults to `None`):
            Part files of an unfinished run, one per process, appended after every batch (default:
            `OUTPUT_DIR.checkpoints`); removed when the data set is written.
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace a non-empty `output_dir` and discard a `checkpoint_dir` of other settings. Without it, a run with
            the settings of an unfinished `checkpoint_dir` resumes it, and other settings are refused.
        progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar with tokens/s.
    """

    model: str = field(default="default", metadata={
        "help": "Teacher: Hub id, local directory or .gguf file ('default': embedded SmolLM2-135M-Instruct)."})
    prompts: str = field(default="builtin", metadata={
        "help": "'builtin' (the package's 2,533 varied prompts) or .txt (one prompt per line), "
                ".jsonl/.json/.parquet/.csv records, a saved dataset directory or a datasets name."})
    output_dir: str | None = field(default=None, metadata={
        "help": "Directory for data.jsonl (chat messages records in prompt order) + manifest.json."})
    prompt_field: str = field(default="prompt", metadata={
        "help": "Record field holding the prompt (a string or chat messages)."})
    num_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    system_prompt: str | None = field(default=None, metadata={"help": "System turn put before every prompt."})
    use_chat_template: bool = field(default=True, metadata={
        "help": "Render prompts with the tokenizer's chat template (off: the prompt text as it is)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Most tokens per answer."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature; 0 decodes greedily."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling probability mass (1: all tokens)."})
    seed: int = field(default=0, metadata={
        "help": "Seed; each prompt draws from its own stream (seed, prompt index)."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per generate call (may change on resume)."})
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={
        "help": "dtype the model generates in."})
    device: str | None = field(default=None, metadata={
        "help": "Device to generate on (default: cuda:LOCAL_RANK when there is a GPU, else the CPU)."})
    checkpoint_dir: str | None = field(default=None, metadata={
        "help": "Part files of an unfinished run (default: OUTPUT_DIR.checkpoints); removed when done."})
    overwrite: bool = field(default=False, metadata={
        "help": "Replace a non-empty output_dir and discard a checkpoint_dir of other settings."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar with tokens/s."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's own code from the Hub."})

    def __post_init__(self):
        if not self.output_dir:
            raise ConfigError("output_dir is not set: give the directory the data set goes to (--output_dir DIR)")
        if self.checkpoint_dir is None:
            self.checkpoint_dir = f"{str(self.output_dir).rstrip('/')}.checkpoints"
        if Path(self.checkpoint_dir).expanduser().resolve() == Path(self.output_dir).expanduser().resolve():
            raise ConfigError("checkpoint_dir is output_dir: give the unfinished run's part files their own directory "
                              "(or leave checkpoint_dir unset)")
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.num_prompts is not None and self.num_prompts < 1:
            raise ConfigError(f"num_prompts={self.num_prompts}: must be >= 1 (or unset for all prompts)")
        if self.temperature < 0:
            raise ConfigError(f"temperature={self.temperature}: must be >= 0 (0 decodes greedily)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p}: must be in (0, 1] (1 keeps every token)")
        if not 0 <= self.seed < 2**31:
            raise ConfigError(f"seed={self.seed}: must be in [0, 2**31)")


@dataclass
class GenerateDataResult(StageResult):
    """``output_dir``: the ``data.jsonl`` file (what the next stage's ``data`` takes). ``metrics``: ``data_file``,
    ``records``, ``new_tokens``, ``prompt_tokens``, ``finish_reasons``, ``tokens_per_second`` of this run's
    generation (``None`` when nothing was generated), ``resumed`` (answers of an earlier run reused),
    ``reused`` (the finished data set was already there)."""


@register_stage("generate-data", config=GenerateDataConfig, inputs={"model": "teacher"}, produces="data",
                distributed=True)
def run_generate_data(config: GenerateDataConfig) -> GenerateDataResult:
    """Answer ``config.prompts`` with ``config.model`` into ``config.output_dir/data.jsonl``.

    Checked before the model loads: the prompts (read and validated), ``output_dir`` (a finished data set of the same
    settings is returned as it is, of other settings refused), ``checkpoint_dir`` (resumed when its settings match,
    refused otherwise) and the model's files. Under ``torchrun``/``accelerate launch`` every rank answers its share
    into its own part file and rank 0 merges them in prompt order.
    """
    from .. import generate as gen
    from ..loading import check_model_source
    from ..outputs import check_output_dir

    prompts = gen.load_prompts(config.prompts, prompt_field=config.prompt_field, limit=config.num_prompts,
                               system_prompt=config.system_prompt)
    settings = gen.GenerationSettings(
        model=str(config.model), dtype=config.dtype, max_new_tokens=config.max_new_tokens,
        temperature=float(config.temperature), top_p=float(config.top_p) if config.temperature > 0 else 1.0,
        seed=config.seed, use_chat_template=config.use_chat_template, prompts=str(config.prompts),
        num_prompts=len(prompts), prompts_fingerprint=gen.prompts_fingerprint(prompts))
    finished = gen.read_manifest(config.output_dir)
    if finished is not None and not config.overwrite:
        gen.check_settings(settings, finished["settings"], where=f"output_dir {config.output_dir}",
                           fix="choose another output_dir or set overwrite to generate again")
        return _result(config, finished, resumed=False, reused=True)
    check_output_dir(config.output_dir, overwrite=config.overwrite, name="output_dir", fix="set overwrite (--overwrite)")
    check_model_source(config.model, trust_remote_code=config.trust_remote_code, need_adapter=False)

    processes = _processes()
    if processes.is_main:
        gen.start_checkpoint_dir(config.checkpoint_dir, settings, overwrite=config.overwrite)
    processes.barrier()
    if not processes.is_main:  # the settings check ran on rank 0; the others must agree before appending
        gen.start_checkpoint_dir(config.checkpoint_dir, settings)
    resumed = bool(gen.read_parts(config.checkpoint_dir))
    model, tokenizer = _load(config, processes)
    stats = gen.run_generation(model, tokenizer, prompts, settings, checkpoint_dir=config.checkpoint_dir,
                               batch_size=config.batch_size, processes=processes, progress=config.progress)
    stats = _sum_over_ranks(stats)
    processes.barrier()
    if processes.is_main:
        import shutil

        records = gen.merge_parts(config.checkpoint_dir, len(prompts))
        speed = stats["new_tokens"] / stats["seconds"] if stats["seconds"] > 0 and stats["prompts"] else None
        gen.write_dataset(records, config.output_dir, settings, overwrite=config.overwrite, extra={
            "world_size": processes.world_size, "last_run": {**stats, "tokens_per_second": speed}})
        shutil.rmtree(config.checkpoint_dir, ignore_errors=True)
    processes.barrier()
    return _result(config, gen.read_manifest(config.output_dir), resumed=resumed, reused=False)


def _result(config: GenerateDataConfig, manifest: dict, *, resumed: bool, reused: bool) -> GenerateDataResult:
    from ..generate import DATA_FILE

    data_file = str(Path(config.output_dir).expanduser().resolve() / DATA_FILE)
    last = manifest.get("last_run", {})
    metrics = {"records": manifest["records"], "new_tokens": manifest["new_tokens"],
               "tokens_per_second": None if reused else last.get("tokens_per_second"), "data_file": data_file,
               "prompt_tokens": manifest["prompt_tokens"], "finish_reasons": manifest["finish_reasons"],
               "empty_answers": manifest["empty_answers"], "resumed": resumed, "reused": reused}
    return GenerateDataResult(stage="generate-data", output_dir=data_file, metrics=metrics)


def _processes():
    """This process's rank, the world size and a barrier; joins the process group ``torchrun``/``accelerate
    launch`` describe in the environment (nccl on GPUs, gloo on CPUs) when there is more than one process."""
    import os

    import torch
    import torch.distributed as dist

    from ..generate import Processes

    if not (dist.is_available() and dist.is_initialized()):
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return Processes()
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Processes(rank=dist.get_rank(), world_size=dist.get_world_size(), barrier=dist.barrier)


def _load(config: GenerateDataConfig, processes):
    from ..loading import load_causal_lm

    device = config.device
    if device is None:
        import os

        import torch

        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    return load_causal_lm(config.model, dtype=config.dtype, device=device,
                          trust_remote_code=config.trust_remote_code)


def _sum_over_ranks(stats: dict) -> dict:
    """Generated prompts and tokens summed over the ranks, seconds of the slowest."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return stats
    import torch

    totals = torch.tensor([stats["prompts"], stats["new_tokens"]], dtype=torch.float64)
    seconds = torch.tensor([stats["seconds"]], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        totals, seconds = totals.cuda(), seconds.cuda()
    dist.all_reduce(totals)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    return {"prompts": int(totals[0]), "new_tokens": int(totals[1]), "seconds": float(seconds[0])}
