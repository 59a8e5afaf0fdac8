"""Upload a carded model folder to the Hugging Face Hub: ``create_repo(exist_ok=True)`` and one ``upload_folder``
commit.

What goes up: ``config.json``, the weights as safetensors (``*.safetensors`` + index), the tokenizer files, the
generation config and chat template, ``README.md``, ``plots/*.png``, ``recipe.yaml``, ``eval.json``/``eval.md``,
``log_history.json``. Never: pickled weights or trainer state (``*.bin``, ``*.pt``, ``*.pth``, ``*.pkl``,
``*.ckpt``), hidden files, checkpoints. The commit uploads exactly :func:`upload_files`' list.

The token: ``huggingface_hub.get_token()`` (``HF_TOKEN`` in the environment, or the ``hf auth login`` cache), never
a command-line flag. It is handed to ``HfApi`` only; every message this module raises is scrubbed of it.

Checked before anything is uploaded (:func:`check_push`): the token exists, the repo id is valid, the folder holds a
model with safetensors weights and a tokenizer, and its card names a license the Hub knows.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from .errors import ConfigError

UPLOAD_PATTERNS = ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                   "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "README.md", "plots/*.png", "recipe.yaml", "eval.json", "eval.md", "log_history.json")
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")


def get_token() -> str:
    """The Hub token from the environment or the login cache; a :class:`ConfigError` when there is none."""
    from huggingface_hub import get_token as hub_token

    token = hub_token()
    if not token:
        raise ConfigError("no Hugging Face token: set HF_TOKEN in the environment or run `hf auth login` (tokens are "
                          "never taken from a command-line flag)")
    return token


def check_repo_id(repo_id: str | None) -> str:
    """``repo_id`` if the Hub accepts it (``NAME`` or ``ORG/NAME``), else a :class:`ConfigError` saying why."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not repo_id:
        raise ConfigError("repo_id is not set: give the repository to push to (--repo_id ORG/NAME)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ConfigError(f"repo_id={repo_id!r} is not a valid Hub repository id ({err}); use ORG/NAME with letters, "
                          "digits, '-', '_' and '.'") from None
    return repo_id


def _matches(rel: str, patterns) -> bool:
    return any(fnmatch.fnmatch(rel, p) for p in patterns)


def upload_files(folder: Path) -> list[str]:
    """The files of ``folder`` that are uploaded (relative paths, sorted; see the module docstring)."""
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not any(part.startswith(".") for part in rel.split("/")) and _matches(rel, UPLOAD_PATTERNS):
            files.append(rel)
    return files


def read_card_metadata(folder: Path) -> dict:
    from huggingface_hub import metadata_load

    readme = folder / "README.md"
    if not readme.is_file():
        raise ConfigError(f"folder {folder} has no README.md model card; render one first (`hf-minitron card "
                          f"--model_dir {folder}`)")
    return metadata_load(readme) or {}


def check_push(folder, repo_id) -> tuple[Path, list[str], dict]:
    """``(folder, files to upload, card metadata)`` after every check (see the module docstring), token excepted."""
    from .card import HUB_LICENSES

    check_repo_id(repo_id)
    path = Path(folder).expanduser().resolve() if folder else None
    if path is None or not path.is_dir():
        raise ConfigError(f"folder={folder!r} is not a folder; give the model folder to push (--folder DIR)")
    files = upload_files(path)
    if "config.json" not in files:
        raise ConfigError(f"folder {path} holds no model (no config.json); give the student's folder")
    if not any(f.endswith(".safetensors") for f in files):
        pickled = [p.name for p in path.iterdir() if _matches(p.name, PICKLE_WEIGHTS)]
        what = f"only pickled weights ({', '.join(pickled)})" if pickled else "no weights"
        raise ConfigError(f"folder {path} holds {what}; only safetensors are pushed: re-save it with "
                          "save_pretrained(..., safe_serialization=True)")
    if not any(f.startswith("tokenizer") or f in ("vocab.json",) for f in files):
        raise ConfigError(f"folder {path} holds no tokenizer; save it into the folder (tokenizer.save_pretrained)")
    meta = read_card_metadata(path)
    license = meta.get("license")
    if license in (None, "", "unknown") or license not in HUB_LICENSES:
        raise ConfigError(f"the model card {path / 'README.md'} has license {license!r}, which is unknown to the Hub "
                          "or unset; render the card with the teacher's license (`hf-minitron card --license ID`)")
    return path, files, meta


def commit_message(folder: Path, files: list[str], meta: dict) -> tuple[str, str]:
    """``(title, description)`` saying what is pushed."""
    import json

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    weights = sum((folder / f).stat().st_size for f in files if f.endswith(".safetensors"))
    base = meta.get("base_model")
    title = (f"Upload {config.get('model_type', 'model')} student ({config.get('num_hidden_layers', '?')} layers, "
             f"hidden {config.get('hidden_size', '?')})" + (f" pruned and distilled from {base}" if base else ""))
    groups = {"weights (safetensors)": [f for f in files if f.endswith(".safetensors") or f.endswith(".index.json")],
              "plots": [f for f in files if f.startswith("plots/")]}
    listed = [f"- {name}: {', '.join(items)}" for name, items in groups.items() if items]
    others = [f for f in files if f not in sum(groups.values(), [])]
    listed.append(f"- other files: {', '.join(others)}")
    description = (f"hf-minitron push: {len(files)} files, {weights / 1e6:.1f} MB of weights, license "
                   f"{meta.get('license')}.\n\n" + "\n".join(listed))
    return title, description


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


def push_folder(folder, repo_id: str, *, private: bool = False, revision: str | None = None) -> dict:
    """Check, then ``create_repo`` + one ``upload_folder`` commit. Returns ``{"repo_id", "revision", "commit_url",
    "commit_oid", "files", "commit_message"}``."""
    path, files, meta = check_push(folder, repo_id)
    token = get_token()
    title, description = commit_message(path, files, meta)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=str(path), commit_message=title,
                                 commit_description=description, revision=revision, allow_patterns=files,
                                 repo_type="model")
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        hint = {401: "the token was refused: check HF_TOKEN or run `hf auth login`",
                403: f"the token may not write to {repo_id}: use a token with write access to that namespace"}.get(
            status, "see the Hub's message")
        raise ConfigError(_scrub(f"push to {repo_id} failed ({status}): {hint}; Hub said: {err}", token)) from None
    return {"repo_id": repo_id, "revision": revision or "main", "commit_url": getattr(info, "commit_url", None),
            "commit_oid": getattr(info, "oid", None), "files": files, "commit_message": title}


__all__ = ["PICKLE_WEIGHTS", "UPLOAD_PATTERNS", "check_push", "check_repo_id", "commit_message", "get_token",
           "push_folder", "upload_files"]
