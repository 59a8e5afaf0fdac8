"""Text sources for calibration, distillation and evaluation, and packing them into fixed-length token blocks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Sequence

import torch


def load_texts(source, *, text_field: str = "text", limit: int | None = None, split: str = "train") -> list[str]:
    """Texts from a list of strings, a ``.txt`` file (one document per non-empty line), a ``.jsonl``/``.json`` file
    (records with ``text_field``), a ``datasets.Dataset``, or a ``datasets`` name."""
    if isinstance(source, (list, tuple)):
        texts = [str(t) for t in source]
    elif hasattr(source, "column_names"):  # datasets.Dataset
        if text_field not in source.column_names:
            raise ValueError(f"dataset has no column {text_field!r} (columns: {source.column_names}); set text_field")
        texts = list(source[text_field])
    else:
        path = Path(str(source)).expanduser()
        if path.is_file():
            texts = _read_file(path, text_field)
        elif str(source).endswith((".txt", ".json", ".jsonl")) or str(source).startswith((".", "/", "~")):
            raise FileNotFoundError(f"text source {str(source)!r} does not exist")
        else:
            import datasets

            ds = datasets.load_dataset(str(source), split=split)
            return load_texts(ds, text_field=text_field, limit=limit)
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError(f"text source {source!r} holds no non-empty texts")
    return texts[:limit] if limit else texts


def read_json_records(path: Path):
    """Parsed records of a ``.jsonl`` file (one JSON value per non-empty line) or a ``.json`` file; a top-level dict's
    ``data``/``train`` list is unwrapped (any other dict is returned as it is)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    records = json.loads(text)
    if isinstance(records, dict):
        records = records.get("data") or records.get("train") or records
    return records


def _read_file(path: Path, text_field: str) -> list[str]:
    if path.suffix in (".json", ".jsonl"):
        records = read_json_records(path)
        if isinstance(records, dict):
            records = list(records.values())
    else:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = []
    for i, rec in enumerate(records):
        if isinstance(rec, str):
            out.append(rec)
        elif text_field in rec:
            out.append(rec[text_field])
        else:
            raise ValueError(f"{path}: record {i} has no field {text_field!r} (fields: {sorted(rec)}); set text_field")
    return out


def token_blocks(texts: Iterable[str], tokenizer, seq_len: int, num_blocks: int | None = None,
                 *, add_eos: bool = True) -> torch.Tensor:
    """Tokenize, join documents with EOS, and cut into ``[num_blocks, seq_len]`` int64 blocks (packing).

    The tail shorter than ``seq_len`` is dropped. Stops tokenizing once ``num_blocks`` blocks are filled.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len}; need at least 2 tokens per block")
    eos = tokenizer.eos_token_id
    buf: list[int] = []
    need = None if num_blocks is None else num_blocks * seq_len
    for text in texts:
        buf.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if add_eos and eos is not None:
            buf.append(eos)
        if need is not None and len(buf) >= need:
            break
    n = len(buf) // seq_len if num_blocks is None else min(num_blocks, len(buf) // seq_len)
    if n == 0:
        raise ValueError(f"the texts give {len(buf)} tokens, fewer than one block of seq_len={seq_len}")
    return torch.tensor(buf[: n * seq_len], dtype=torch.long).view(n, seq_len)


def split_held_out(texts: Sequence[str], held_out_fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """``(train, held_out)``: the last ``held_out_fraction`` of the documents (at least one) is held out."""
    if not 0 < held_out_fraction < 1:
        raise ValueError(f"held_out_fraction={held_out_fraction}; must be in (0, 1)")
    n_held = max(1, int(round(len(texts) * held_out_fraction)))
    return list(texts[:-n_held]), list(texts[-n_held:])


def fingerprint(*parts) -> str:
    """A short sha256 of tensors, strings and JSON-able values, e.g. to identify calibration data."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(part.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]
