"""Training data for distillation as a ``datasets.Dataset`` in a form ``SFTTrainer`` prepares itself.

Plain text (``.txt`` one document per line, ``.jsonl``/``.json``/``.parquet``/``.csv`` records, a saved dataset
directory, or a ``datasets`` name), chat data (``messages`` or ShareGPT ``conversations``), prompt-completion pairs,
already tokenized ``input_ids``, and Alpaca-style ``instruction``/``input``/``output`` records (turned into chat
messages so they go through the tokenizer's template).
"""

from __future__ import annotations

from pathlib import Path

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def _alpaca_to_messages(example):
    prompt = example["instruction"]
    if example.get("input"):
        prompt = f"{prompt}\n\n{example['input']}"
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": example["output"]}]}


def load_sft_dataset(source, *, text_field: str = "text", split: str = "train", name: str | None = None,
                     max_samples: int | None = None):
    """A ``datasets.Dataset`` with a column ``SFTTrainer`` understands; a clear error names the columns otherwise."""
    import datasets

    from ..data import load_texts

    path = Path(str(source)).expanduser()
    if path.is_file():
        if path.suffix == ".txt":
            ds = datasets.Dataset.from_dict({text_field: load_texts(path)})
        elif path.suffix in _FILE_BUILDERS:
            ds = datasets.load_dataset(_FILE_BUILDERS[path.suffix], data_files=str(path), split="train")
        else:
            raise ValueError(f"data file {path} has an unsupported suffix; use .txt (one document per line), "
                             ".jsonl, .json, .parquet or .csv")
    elif path.is_dir() and (path / "dataset_info.json").is_file():
        ds = datasets.load_from_disk(str(path))
    elif path.is_dir():
        ds = datasets.load_dataset(str(path), name=name, split=split)
    elif str(source).startswith((".", "/", "~")) or path.suffix in {".txt", *_FILE_BUILDERS}:
        raise FileNotFoundError(f"data {str(source)!r} does not exist")
    else:
        ds = datasets.load_dataset(str(source), name=name, split=split)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(f"data {source!r} has no split {split!r} (splits: {list(ds)}); set --data_split")
        ds = ds[split]
    columns = set(ds.column_names)
    if {"instruction", "output"} <= columns and not columns & {text_field, "messages", "prompt"}:
        ds = ds.map(_alpaca_to_messages, remove_columns=ds.column_names)
        columns = set(ds.column_names)
    usable = (text_field in columns or "messages" in columns or "conversations" in columns
              or {"prompt", "completion"} <= columns or "input_ids" in columns)
    if not usable:
        raise ValueError(
            f"data {source!r} has columns {sorted(columns)}; distillation needs a text column "
            f"({text_field!r}, set --dataset_text_field), chat 'messages'/'conversations', 'prompt'+'completion', "
            "'input_ids', or Alpaca 'instruction'/'input'/'output'."
        )
    if max_samples is not None:
        ds = ds.select(range(min(max_samples, len(ds))))
    if len(ds) == 0:
        raise ValueError(f"data {source!r} holds no examples")
    return ds
