"""Output locations: the one check run before any work, and the one atomic writer every stage saves through.

:func:`check_output_dir` refuses, before a model loads, what would fail or destroy something later: a path that is a
file or lies under a file, a non-empty directory without ``overwrite``, a location the user cannot write to.

:func:`atomic_output_dir` yields a hidden temporary sibling ``.NAME.tmp-XXXX`` to write into; on success it becomes
``NAME`` with one rename (an old ``NAME`` is swapped out first and removed), on failure it is removed. A process
killed in between leaves only the hidden temporary, which the next write to the same ``NAME`` removes once it is
older than :data:`STALE_AFTER_S` (so a concurrent writer's temporary is left alone). The result gets the permissions
``save_pretrained`` would give a new directory (``0o777 & ~umask``), not ``mkdtemp``'s ``0o700``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputDirError

STALE_AFTER_S = 6 * 3600.0


def _nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path("/")


def check_output_dir(path: str | os.PathLike, *, overwrite: bool = False, name: str = "output_dir",
                     fix: str = "pass overwrite=True") -> Path:
    """Refuse ``path`` as an output directory before any work; return it resolved.

    ``name`` (e.g. ``"--output_dir"``) and ``fix`` (e.g. ``"pass --overwrite"``) word the :class:`OutputDirError`
    for the caller's interface."""
    if path is None or str(path).strip() == "":
        raise OutputDirError(f"{name} is not set; give the directory the result should be written to")
    out = Path(path).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{name} {out} exists and is a file; pass a directory path")
    existing = _nearest_existing(out)
    if existing != out and not existing.is_dir():
        raise OutputDirError(f"{name} {out} lies under {existing}, which is a file; pass a directory path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputDirError(f"{name} {out} is not empty; choose another directory or {fix}")
    parent = out.parent if out.exists() else existing
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputDirError(f"{name} {out}: no permission to write in {parent}; choose a directory you can write to")
    return out


def remove_stale_temporaries(out: Path, *, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove ``.OUT.tmp-*`` / ``.OUT.old-*`` siblings of ``out`` left by killed writers (older than
    ``older_than_s``). Returns what was removed."""
    removed = []
    if not out.parent.is_dir():
        return removed
    now = time.time()
    for prefix in (f".{out.name}.tmp-", f".{out.name}.old-"):
        for p in out.parent.glob(prefix + "*"):
            try:
                if now - p.stat().st_mtime >= older_than_s:
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                    removed.append(p)
            except FileNotFoundError:
                continue
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output_dir(path: str | os.PathLike, *, overwrite: bool = False, name: str = "output_dir",
                      fix: str = "pass overwrite=True"):
    """``with atomic_output_dir(out) as tmp:`` write into ``tmp``; on a clean exit ``tmp`` becomes ``out``."""
    out = check_output_dir(path, overwrite=overwrite, name=name, fix=fix)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if out.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, backup / out.name)
            os.replace(tmp, out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_file(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write one file atomically: ``data`` goes to a hidden sibling ``.NAME.tmp-PID``, renamed over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)
    return path


def write_json(path: str | os.PathLike, obj, **dumps) -> Path:
    """:func:`replace_file` of ``obj`` as JSON (``dumps``: ``json.dumps`` keywords; default ``indent=2``)."""
    import json

    dumps.setdefault("indent", 2)
    return replace_file(path, json.dumps(obj, **dumps) + "\n")


def read_json(path: str | os.PathLike, filename: str, *, error: type[Exception], missing: str, invalid: str,
              label: str = ""):
    """``(file, object)`` of a stage's JSON product: ``path`` is the file or the folder holding ``filename``. A missing
    file raises ``error`` (``label`` + the path + ``missing``, what to do), a file that is not JSON raises it with
    ``invalid`` appended; checking the object's shape is the caller's. ``label``: how the message names ``path``,
    e.g. ``"architecture="`` for a config field."""
    import json

    where = Path(path).expanduser()
    file = where / filename if where.is_dir() else where
    if not file.is_file():
        raise error(f"{label}{str(path)!r} holds no {filename}; {missing}")
    try:
        return file, json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise error(f"{file} is not valid JSON ({err.msg} at line {err.lineno}); {invalid}") from None


__all__ = ["STALE_AFTER_S", "atomic_output_dir", "check_output_dir", "read_json", "remove_stale_temporaries",
           "replace_file", "write_json"]
