"""Reading a command's ``--config FILE.yaml``: a mapping of the stage's field names to values."""

from __future__ import annotations

from pathlib import Path


def read_stage_yaml(path, config_cls, *, command: str) -> dict:
    """``{field: value}`` from a YAML mapping; an unknown key is a ``ConfigError`` naming the file, the key and the
    closest field. Dashes in keys are read as underscores (``max-steps`` = ``max_steps``)."""
    import yaml

    from ..errors import ConfigError, yaml_error_text
    from ..stages.base import config_fields, suggest

    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not valid YAML ({yaml_error_text(err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of field names to values, got {type(data).__name__}")
    known = config_fields(config_cls)
    out = {}
    for key, value in data.items():
        field = str(key).replace("-", "_")
        if field not in known:
            raise ConfigError(f"--config {path}: unknown field {key!r}{suggest(field, known)}; `hf-minitron "
                              f"{command} --help` lists the fields")
        out[field] = value
    return out
