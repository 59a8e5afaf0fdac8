"""Text sources for calibration, distillation and evaluation, and packing them into fixed-length token blocks."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch


from .errors import DataError

#: File suffixes every stage reads, and how: plain text (one document per non-empty line) or records.
TEXT_SUFFIXES = (".txt", ".md")
RECORD_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
ACCEPTED = ("a .txt/.md file (one document per line), a .jsonl/.json/.parquet/.csv file of records, a saved "
            "dataset directory (Dataset.save_to_disk) or a datasets name")


def load_records(source, *, text_field: str = "text", split: str = "train", name: str | None = None,
                 limit: int | None = None) -> list[dict]:
    """Records (dicts) from any data source a stage accepts; the one reader behind every stage's data.

    ``source``: a list of dicts or strings, a ``datasets.Dataset``, a file (see :data:`ACCEPTED`; text lines become
    ``{text_field: line}``), a saved dataset directory, or a ``datasets`` name (``split``/``name`` select it).
    Unreadable input raises :class:`~hf_minitron.errors.DataError` naming the file, the line or row, and the fix.
    """
    if isinstance(source, (list, tuple)):
        records = [{text_field: r} if isinstance(r, str) else r for r in source]
    elif hasattr(source, "column_names"):  # datasets.Dataset
        records = [dict(r) for r in source]
    else:
        records = _records_from_path(source, text_field=text_field, split=split, name=name)
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(f"data {_shown(source)}: row {i} is a {type(rec).__name__}, not a record; give records "
                            "(JSON objects) or text")
    if not records:
        raise DataError(f"data {_shown(source)} holds no records")
    return records[:limit] if limit else records


def _shown(source) -> str:
    return repr(str(source)) if isinstance(source, (str, os.PathLike)) else type(source).__name__


def _records_from_path(source, *, text_field: str, split: str, name: str | None) -> list[dict]:
    path = Path(str(source)).expanduser()
    if path.is_file():
        return read_data_file(path, text_field=text_field)
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            import datasets

            ds = datasets.load_from_disk(str(path))
            return [dict(r) for r in _pick_split(ds, split, source)]
        raise DataError(f"data {str(source)!r} is a directory, not a data file or a saved dataset; give "
                        f"{ACCEPTED}")
    if path.suffix or str(source).startswith((".", "/", "~")):  # a file name, not a datasets name
        raise DataError(f"data {str(source)!r} does not exist; give {ACCEPTED}")
    import datasets

    try:
        ds = datasets.load_dataset(str(source), name=name, split=split)
    except (FileNotFoundError, ConnectionError, ValueError) as err:
        raise DataError(f"data {str(source)!r} is neither a local file nor a datasets name that can be loaded "
                        f"({type(err).__name__}: {err}); give {ACCEPTED}") from None
    return [dict(r) for r in ds]


def _pick_split(ds, split: str, source):
    if hasattr(ds, "keys") and not hasattr(ds, "column_names"):  # DatasetDict
        if split not in ds:
            raise DataError(f"data {str(source)!r} has no split {split!r} (splits: {list(ds)}); set the split")
        return ds[split]
    return ds


def read_data_file(path: Path, *, text_field: str = "text") -> list[dict]:
    """Records of one data file (see :data:`ACCEPTED`)."""
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES + RECORD_SUFFIXES:
        raise DataError(f"data file {path} has the suffix {suffix or '(none)'!r}, which no stage reads; give "
                        f"{ACCEPTED}")
    if suffix in (".parquet", ".csv"):
        import datasets

        try:
            ds = datasets.load_dataset(suffix[1:], data_files=str(path), split="train")
        except Exception as err:  # the builders raise many types for a damaged file
            raise DataError(f"data file {path} cannot be read as {suffix[1:]} ({type(err).__name__}: {err})") from None
        return [dict(r) for r in ds]
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        raise DataError(f"data file {path} holds binary data, not text; give {ACCEPTED}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"data file {path} is not UTF-8 text (byte {err.start}); convert it to UTF-8") from None
    if suffix in TEXT_SUFFIXES:
        return [{text_field: line} for line in text.splitlines() if line.strip()]
    records = read_json_records(path, text=text)
    if isinstance(records, dict):
        records = list(records.values()) if all(isinstance(v, (dict, str)) for v in records.values()) else [records]
    return [{text_field: r} if isinstance(r, str) else r for r in records]


def load_texts(source, *, text_field: str = "text", limit: int | None = None, split: str = "train") -> list[str]:
    """Non-empty texts (``text_field`` of each record) from any source :func:`load_records` reads, or a list of
    strings; a chat record without ``text_field`` gives its turns' contents (:func:`chat_text`). Any other record
    without ``text_field`` is a :class:`DataError` naming the row and the fields it has."""
    if isinstance(source, (list, tuple)) and all(isinstance(t, str) for t in source):
        texts = [str(t) for t in source]
    else:
        records = load_records(source, text_field=text_field, split=split)
        texts = []
        for i, rec in enumerate(records):
            if text_field not in rec and isinstance(rec.get("messages", rec.get("conversations")), list):
                texts.append(chat_text(rec.get("messages", rec.get("conversations")), source, i))
                continue
            if text_field not in rec:
                raise DataError(f"data {_shown(source)}: record {i} has no field {text_field!r} (fields: "
                                f"{sorted(rec)}); set text_field to the field that holds the text")
            value = rec[text_field]
            if value is not None and not isinstance(value, str):
                raise DataError(f"data {_shown(source)}: record {i} field {text_field!r} is a "
                                f"{type(value).__name__}, not text; set text_field to the field that holds the text")
            texts.append(value or "")
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise DataError(f"data {_shown(source)} holds no non-empty texts")
    return texts[:limit] if limit else texts


def chat_text(turns: list, source, row: int) -> str:
    """The text of a chat record (``messages`` of ``{"role", "content"}`` or sharegpt ``conversations`` of
    ``{"from", "value"}``): the turns' contents joined by blank lines, for stages that read plain text (calibration,
    caching, evaluation)."""
    parts = []
    for j, turn in enumerate(turns):
        content = turn.get("content", turn.get("value")) if isinstance(turn, dict) else None
        if not isinstance(content, str):
            raise DataError(f"data {_shown(source)}: record {row} turn {j} has no text content (a {{'role', "
                            "'content'}} or {'from', 'value'} turn is expected)")
        parts.append(content)
    return "\n\n".join(parts)


def read_json_records(path: Path, *, text: str | None = None):
    """Parsed records of a ``.jsonl`` file (one JSON value per non-empty line) or a ``.json`` file; a top-level dict's
    ``data``/``train`` list is unwrapped (any other dict is returned as it is). A syntax error is a
    :class:`DataError` naming the file and the real line."""
    text = path.read_text(encoding="utf-8") if text is None else text
    if path.suffix == ".jsonl":
        out = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {lineno} is not valid JSON ({err.msg} at column {err.colno}); fix or "
                                "remove that line") from None
        return out
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        hint = " (one JSON object per line? name the file .jsonl)" if err.msg == "Extra data" else ""
        raise DataError(f"{path}: not valid JSON at line {err.lineno} column {err.colno}: {err.msg}{hint}") from None
    if isinstance(records, dict):
        records = records.get("data") or records.get("train") or records
    return records


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
        raise DataError(f"the texts give {len(buf)} tokens, fewer than one block of seq_len={seq_len}; give more text "
                        "or a smaller seq_len")
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
