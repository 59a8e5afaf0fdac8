"""The ``correct-teacher`` stage: fine-tune the teacher on the distillation corpus (LoRA merged back, or full), report
the held-out loss before and after, save the corrected teacher atomically. Runs before importance scoring and pruning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from ..alignment.training import FineTuningArguments
from .base import StageResult, register_stage

HELD_OUT_SEQ_LEN = 256  # tokens per held-out block (capped by max_length)


@dataclass
class CorrectTeacherConfig(FineTuningArguments, SFTConfig):
    r"""Configuration of :func:`run_correct_teacher`: every TRL ``SFTConfig`` field (``--max_steps``,
    ``--warmup_steps``, ``--seed``, ...) plus the ones below. ``output_dir`` is where the corrected teacher is saved;
    the Trainer writes into ``checkpoint_dir``.

    Defaults that differ from ``SFTConfig``: `learning_rate` is picked by the training mode when not given
    (`2e-5` full fine-tuning, `1e-4` LoRA); `num_train_epochs=1`, `per_device_train_batch_size=4`,
    `lr_scheduler_type="constant"`, `max_length=512`, `activation_checkpointing=False`, `save_strategy="no"`;
    `use_cpu` is set when there is no CUDA device and `bf16` only where the GPU supports it.

    > Parameters that control the model and the data

        model (`str`, *optional*, defaults to `"default"`):
            Teacher to correct: a Hub id, a local directory or a `.gguf` file (`"default"`: the embedded
            SmolLM2-135M-Instruct).
        data (`str`):
            Correction corpus: `.txt`/`.md` (one document per line), `.jsonl`/`.json`/`.parquet`/`.csv` records with
            `dataset_text_field` (plain text) or `messages`/sharegpt `conversations` (chat), a saved dataset directory
            or a `datasets` name. Every record is checked before the model loads.
        dataset_text_field (`str`, *optional*, defaults to `"text"`):
            Record field holding the text of plain-text data.
        assistant_only_loss (`bool`, *optional*, defaults to `False`):
            Chat data only: train on the assistant turns (needs a chat template with `{% generation %}` marks).
        limit (`int` or `None`, *optional*, defaults to `None`):
            Use only the first N records.
        held_out_fraction (`float`, *optional*, defaults to `0.0`):
            Fraction of the records (the last ones) kept out of training; their mean next-token loss (nats/token,
            blocks of `min(max_length, 256)` tokens; chat records rendered with the chat template) is reported
            before and after. Must be in [0, 1).

    > Parameters that control the training mode

        use_lora (`bool`, *optional*, defaults to `True`):
            Train a LoRA adapter and merge it into the weights; `False`: train every weight.
        lora_r (`int`, *optional*, defaults to `16`), lora_alpha (`int`, *optional*, defaults to `32`),
        lora_dropout (`float`, *optional*, defaults to `0.0`):
            Rank, scale numerator (the update is scaled by `alpha / r`) and dropout of the adapter.
        lora_target_modules (`list[str]` or `None`, *optional*, defaults to `None`):
            Modules the adapter wraps (default: every linear layer of the decoder, not the LM head).
        learning_rate (`float` or `None`, *optional*, defaults to `None`):
            `None`: `2e-5` for full fine-tuning, `1e-4` with LoRA.

    > Parameters that control the output

        output_dir (`str`):
            Directory the corrected teacher is written to (atomically, verified by reloading).
        checkpoint_dir (`str` or `None`, *optional*, defaults to `None`):
            Trainer checkpoints and logs (default: `OUTPUT_DIR.checkpoints`; removed when left empty).
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace a non-empty `output_dir`.
    """

    _trl_class = SFTConfig
    _learning_rates = (2e-5, 1e-4)  # (full fine-tuning, LoRA)

    model: str = field(default="default", metadata={
        "help": "Teacher to correct: Hub id, local directory or .gguf file ('default': embedded "
                "SmolLM2-135M-Instruct)."})
    data: str | None = field(default=None, metadata={
        "help": "Correction corpus: .txt (one document per line), .jsonl/.json/.parquet/.csv records with "
                "dataset_text_field or chat messages/conversations, a saved dataset directory or a datasets name."})
    output_dir: str | None = field(default=None, metadata={
        "help": "Directory the corrected teacher is written to (atomically; LoRA merged back)."})
    use_lora: bool = field(default=True, metadata={
        "help": "Train a LoRA adapter merged back into the weights (default); --use_lora false trains every weight."})
    held_out_fraction: float = field(default=0.0, metadata={
        "help": "Fraction of the records (the last ones) kept out of training; their loss is reported before and "
                "after."})


@dataclass
class CorrectTeacherResult(StageResult):
    """``metrics``: ``records_train``, ``records_held_out``, ``held_out_nll_before``/``_after`` (nats/token, with a
    held-out split), ``train_loss``, ``global_step``, ``use_lora``."""


def _held_out_blocks(records: list[dict], tokenizer, config: CorrectTeacherConfig):
    """Token blocks ``[n, seq]`` of the held-out records (chat records rendered with the chat template)."""
    from ..data import token_blocks
    from ..errors import DataError

    if "messages" in records[0]:
        texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in records]
    else:
        texts = [r["text"] for r in records]
    seq_len = min(config.max_length or HELD_OUT_SEQ_LEN, HELD_OUT_SEQ_LEN)
    try:
        return token_blocks(texts, tokenizer, seq_len, add_eos="messages" not in records[0])
    except DataError as err:
        raise DataError(f"held_out_fraction={config.held_out_fraction}: the {len(records)} held-out record(s) do not "
                        f"fill one block of {seq_len} tokens ({err}); raise held_out_fraction or set it to 0") from None


@register_stage("correct-teacher", config=CorrectTeacherConfig, inputs={"model": "teacher", "data": "data"},
                produces="teacher")
def run_correct_teacher(config: CorrectTeacherConfig) -> CorrectTeacherResult:
    """Correct ``config.model`` on ``config.data`` and save it to ``config.output_dir``.

    Checked before the model loads: the output and checkpoint directories, the model's files, every data record, the
    training mode against the data (``assistant_only_loss`` needs chat data) and, with the tokenizer alone, that the
    held-out records fill at least one block.
    """
    from ..alignment.data import load_sft_data
    from ..alignment.training import split_held_out_records, train_and_merge
    from ..loading import load_tokenizer
    from ..correction import build_correction_trainer, check_assistant_only_loss
    from ..errors import ConfigError
    from ..evaluation import mean_nll
    from ..loading import check_model_source, load_causal_lm, save_model
    from ..outputs import check_output_dir

    check_output_dir(config.output_dir, overwrite=config.overwrite, name="output_dir", fix="set overwrite (--overwrite)")
    check_output_dir(config.checkpoint_path(), overwrite=True, name="checkpoint_dir")
    if not config.data:
        raise ConfigError("data is not set: give the correction corpus (--data FILE, e.g. a .jsonl of documents)")
    check_model_source(config.model, trust_remote_code=config.trust_remote_code, need_adapter=False)
    data = load_sft_data(config.data, text_field=config.dataset_text_field, limit=config.limit)
    check_assistant_only_loss(config, data)
    train, held = split_held_out_records(list(data), config.held_out_fraction)
    tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    blocks = _held_out_blocks(held, tokenizer, config) if held else None

    model, _ = load_causal_lm(config.model, trust_remote_code=config.trust_remote_code, tokenizer=False)
    metrics = {"records_train": len(train), "records_held_out": len(held)}
    if blocks is not None:
        metrics["held_out_nll_before"] = mean_nll(model, blocks, config.per_device_eval_batch_size)
    trainer = build_correction_trainer(model, tokenizer, train, config)
    model, output = train_and_merge(trainer, resume_from_checkpoint=config.resume_from_checkpoint)
    if blocks is not None:
        metrics["held_out_nll_after"] = mean_nll(model, blocks, config.per_device_eval_batch_size)
    metrics.update(train_loss=float(output.training_loss), global_step=int(output.global_step),
                   use_lora=config.use_lora)
    save_model(model, tokenizer, config.output_dir, overwrite=config.overwrite)
    return CorrectTeacherResult(stage="correct-teacher", output_dir=str(config.output_dir), metrics=metrics)
