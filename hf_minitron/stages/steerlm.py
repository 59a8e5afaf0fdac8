"""The ``steerlm`` stage: SteerLM attribute-conditioned SFT of the student on prompt/response data with 0-4 attribute
labels (optionally labelling ``verbosity`` from response lengths first); save the student atomically."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from ..alignment.training import FineTuningArguments
from ..errors import ConfigError
from .base import StageResult, register_stage


@dataclass
class SteerLMConfig(FineTuningArguments, SFTConfig):
    r"""Configuration of :func:`run_steerlm`: every TRL ``SFTConfig`` field (``--max_steps``, ``--warmup_steps``,
    ``--seed``, ...) plus the ones below. ``output_dir`` is where the trained student is saved; the Trainer writes
    into ``checkpoint_dir``. The format (attribute string inside the assistant turn, loss on the response only) is
    described in :mod:`hf_minitron.alignment.steerlm`.

    Defaults that differ from ``SFTConfig``: `learning_rate` is picked by the training mode when not given
    (`2e-5` full fine-tuning, `1e-4` LoRA); `completion_only_loss=True` (loss on the response tokens only);
    `num_train_epochs=1`, `per_device_train_batch_size=4`,
    `lr_scheduler_type="constant"`, `max_length=512`, `activation_checkpointing=False`, `save_strategy="no"`;
    `use_cpu` is set when there is no CUDA device and `bf16` only where the GPU supports it.

    > Parameters that control the model and the data

        model (`str`, *optional*, defaults to `"default"`):
            Student to train: a Hub id, a local directory (e.g. the distill stage's output) or a `.gguf` file.
        data (`str`):
            Records (`.jsonl`/`.json`/`.parquet`/`.csv`, a saved dataset directory or a `datasets` name) with
            `prompt_field` (a string or messages ending with a user turn), `response_field` and one integer 0-4
            field per attribute. Every record is checked before the model loads.
        attributes (`str`, *optional*, defaults to `"helpsteer"`):
            Attribute names in the order the attribute string lists them: `"helpsteer"` (helpfulness, correctness,
            coherence, complexity, verbosity), `"oasst"` (quality, toxicity, humor, creativity) or a comma-separated
            list.
        prompt_field (`str`, *optional*, defaults to `"prompt"`), response_field (`str`, *optional*, defaults to
        `"response"`):
            Record fields holding the prompt and the response.
        annotate_verbosity (`bool`, *optional*, defaults to `False`):
            Label `verbosity` 0-4 from the response-length quintiles (in tokens) before training; needs `verbosity`
            among `attributes`.
        max_length (`int` or `None`, *optional*, defaults to `512`):
            Tokens per example. A record whose template, prompt and attribute string alone fill `max_length` (no
            response token would be trained) is refused before the model loads.
        limit (`int` or `None`, *optional*, defaults to `None`):
            Use only the first N records.
        held_out_fraction (`float`, *optional*, defaults to `0.0`):
            Fraction of the records (the last ones) kept out of training; their mean next-token loss over the whole
            formatted example (nats/token) is reported before and after. Must be in [0, 1).

    > Parameters that control the training mode

        use_lora (`bool`, *optional*, defaults to `False`):
            Train a LoRA adapter merged back into the weights instead of every weight.
        lora_r (`int`, *optional*, defaults to `16`), lora_alpha (`int`, *optional*, defaults to `32`),
        lora_dropout (`float`, *optional*, defaults to `0.0`), lora_target_modules (`list[str]` or `None`):
            The adapter (default targets: every linear layer of the decoder).
        learning_rate (`float` or `None`, *optional*, defaults to `None`):
            `None`: `2e-5` for full fine-tuning, `1e-4` with LoRA.

    > Parameters that control the output

        output_dir (`str`):
            Directory the trained student is written to (atomically, verified by reloading).
        checkpoint_dir (`str` or `None`, *optional*, defaults to `None`):
            Trainer checkpoints and logs (default: `OUTPUT_DIR.checkpoints`; removed when left empty).
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace a non-empty `output_dir`.
    """

    _trl_class = SFTConfig
    _learning_rates = (2e-5, 1e-4)  # (full fine-tuning, LoRA)

    model: str = field(default="default", metadata={
        "help": "Student to train: Hub id, local directory (e.g. the distill stage's output) or .gguf file."})
    data: str | None = field(default=None, metadata={
        "help": "Records with prompt_field, response_field and one integer 0-4 field per attribute "
                "(.jsonl/.json/.parquet/.csv, a saved dataset directory or a datasets name)."})
    output_dir: str | None = field(default=None, metadata={
        "help": "Directory the trained student is written to (atomically; LoRA merged back)."})
    attributes: str = field(default="helpsteer", metadata={
        "help": "Attribute names in attribute-string order: helpsteer (helpfulness,correctness,coherence,complexity,"
                "verbosity), oasst (quality,toxicity,humor,creativity) or a comma-separated list."})
    prompt_field: str = field(default="prompt", metadata={"help": "Record field holding the prompt."})
    response_field: str = field(default="response", metadata={"help": "Record field holding the response."})
    annotate_verbosity: bool = field(default=False, metadata={
        "help": "Label verbosity 0-4 from response-length quintiles before training (needs verbosity in "
                "attributes)."})

    def __post_init__(self):
        if self.completion_only_loss is None:  # TRL's None means "prompt-completion data only"; ours is tokenized
            self.completion_only_loss = True
        super().__post_init__()
        from ..alignment.steerlm import resolve_attributes

        names = resolve_attributes(self.attributes)
        if self.annotate_verbosity and "verbosity" not in names:
            raise ConfigError(f"annotate_verbosity needs 'verbosity' among attributes (attributes: {list(names)}); "
                              "add it or unset annotate_verbosity")

    def attribute_names(self) -> tuple[str, ...]:
        from ..alignment.steerlm import resolve_attributes

        return resolve_attributes(self.attributes)


@dataclass
class SteerLMResult(StageResult):
    """``metrics``: ``examples_train``, ``examples_held_out``, ``held_out_nll_before``/``_after`` (nats/token over the
    whole formatted examples, with a held-out split), ``train_loss``, ``global_step``, ``attributes``."""


def _padded(dataset, pad_id: int, max_length: int | None):
    """``(ids, attention_mask)`` ``[n, longest]`` of tokenized examples cut to ``max_length``, right-padded."""
    import torch

    seqs = [s[:max_length] if max_length else s for s in dataset["input_ids"]]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def load_steerlm_data(config: SteerLMConfig, tokenizer):
    """Every record read, (annotated,) checked and tokenized: ``(train, held_out)`` datasets (``held_out`` may be
    empty). Row numbers in errors are those of the data source."""
    from ..alignment.data import load_records
    from ..alignment.steerlm import annotate_attributes, steerlm_dataset
    from ..alignment.training import split_held_out_records

    records = load_records(config.data, limit=config.limit)
    if config.annotate_verbosity:
        records = list(annotate_attributes(records, "verbosity", tokenizer=tokenizer, prompt_field=config.prompt_field,
                                           response_field=config.response_field))
    prepared = steerlm_dataset(records, tokenizer, attributes=config.attributes, prompt_field=config.prompt_field,
                               response_field=config.response_field, max_length=config.max_length)
    train_idx, held_idx = split_held_out_records(list(range(len(prepared))), config.held_out_fraction)
    return prepared.select(train_idx), prepared.select(held_idx)


@register_stage("steerlm", config=SteerLMConfig, inputs={"model": "student"}, produces="student")
def run_steerlm(config: SteerLMConfig) -> SteerLMResult:
    """Train ``config.model`` on ``config.data`` with SteerLM attribute conditioning; save to ``config.output_dir``.

    Checked before the model loads: the output and checkpoint directories, the model's files, and, with the tokenizer
    alone, every record (fields, 0-4 labels, the chat template's assistant turn, room for the response within
    ``max_length``).
    """
    from ..alignment.steerlm import build_steerlm_trainer
    from ..alignment.training import train_and_merge
    from ..loading import load_tokenizer
    from ..evaluation import mean_nll
    from ..loading import check_model_source, load_causal_lm, save_model
    from ..outputs import check_output_dir

    check_output_dir(config.output_dir, overwrite=config.overwrite, name="output_dir", fix="set overwrite (--overwrite)")
    check_output_dir(config.checkpoint_path(), overwrite=True, name="checkpoint_dir")
    if not config.data:
        raise ConfigError("data is not set: give prompt/response records with attribute labels (--data FILE)")
    check_model_source(config.model, trust_remote_code=config.trust_remote_code, need_adapter=False)
    tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    train, held = load_steerlm_data(config, tokenizer)
    held_ids = _padded(held, tokenizer.pad_token_id or 0, config.max_length) if len(held) else None

    model, _ = load_causal_lm(config.model, trust_remote_code=config.trust_remote_code, tokenizer=False)
    metrics = {"examples_train": len(train), "examples_held_out": len(held)}
    batch = config.per_device_eval_batch_size
    if held_ids is not None:
        metrics["held_out_nll_before"] = mean_nll(model, held_ids[0], batch, attention_mask=held_ids[1])
    trainer = build_steerlm_trainer(model, tokenizer, train, config)
    model, output = train_and_merge(trainer, resume_from_checkpoint=config.resume_from_checkpoint)
    if held_ids is not None:
        metrics["held_out_nll_after"] = mean_nll(model, held_ids[0], batch, attention_mask=held_ids[1])
    metrics.update(train_loss=float(output.training_loss), global_step=int(output.global_step),
                   attributes=list(config.attribute_names()))
    save_model(model, tokenizer, config.output_dir, overwrite=config.overwrite)
    return SteerLMResult(stage="steerlm", output_dir=str(config.output_dir), metrics=metrics)
