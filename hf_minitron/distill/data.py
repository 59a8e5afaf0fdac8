"""Training data for distillation as a ``datasets.Dataset`` in a form ``SFTTrainer`` prepares itself.

Plain text (``.txt`` one document per line, ``.jsonl``/``.json``/``.parquet``/``.csv`` records, a saved dataset
directory, or a ``datasets`` name), chat data (``messages`` or ShareGPT ``conversations``), prompt-completion pairs,
already tokenized ``input_ids``, and Alpaca-style ``instruction``/``input``/``output`` records (turned into chat
messages so they go through the tokenizer's template).
"""

from __future__ import annotations

from ..errors import DataError


def _alpaca_to_messages(example):
    prompt = example["instruction"]
    if example.get("input"):
        prompt = f"{prompt}\n\n{example['input']}"
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": example["output"]}]}


def load_sft_dataset(source, *, text_field: str = "text", split: str = "train", name: str | None = None,
                     max_samples: int | None = None):
    """A ``datasets.Dataset`` with a column ``SFTTrainer`` understands, read with the one data reader
    (:func:`hf_minitron.data.load_records`); a :class:`DataError` names the columns otherwise."""
    import datasets

    from ..data import load_records

    ds = datasets.Dataset.from_list(load_records(source, text_field=text_field, split=split, name=name,
                                                   limit=max_samples))
    columns = set(ds.column_names)
    if {"instruction", "output"} <= columns and not columns & {text_field, "messages", "prompt"}:
        ds = ds.map(_alpaca_to_messages, remove_columns=ds.column_names)
        columns = set(ds.column_names)
    usable = (text_field in columns or "messages" in columns or "conversations" in columns
              or {"prompt", "completion"} <= columns or "input_ids" in columns)
    if not usable:
        raise DataError(
            f"data {source!r} has columns {sorted(columns)}; distillation needs a text column "
            f"({text_field!r}, set --dataset_text_field), chat 'messages'/'conversations', 'prompt'+'completion', "
            "'input_ids', or Alpaca 'instruction'/'input'/'output'."
        )
    if max_samples is not None:
        ds = ds.select(range(min(max_samples, len(ds))))
    if len(ds) == 0:
        raise DataError(f"data {source!r} holds no examples")
    return ds
