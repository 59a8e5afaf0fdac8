"""The ``push`` stage: upload a carded model folder to the Hugging Face Hub (see :mod:`hf_minitron.hub`).

``hf-minitron push --folder OUTPUT --repo_id ORG/NAME [--private true] [--revision BRANCH]``. The token comes from
``HF_TOKEN`` or the ``hf auth login`` cache; there is deliberately no token field, so it never lands in shell
history, a recipe or a log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from .base import StageResult, register_stage


@dataclass
class PushConfig:
    r"""Configuration of :func:`run_push`.

    > Parameters that control what is pushed

        folder (`str`):
            The model folder: weights (safetensors), tokenizer, `README.md` card, plots, recipe (the card stage's
            product).

    > Parameters that control where it goes

        repo_id (`str`):
            Hub repository, `ORG/NAME` (created if missing).
        private (`bool`, *optional*, defaults to `False`):
            Create the repository private (an existing repository keeps its visibility).
        revision (`str` or `None`, *optional*, defaults to `None`):
            Branch to commit to (created from `main` if missing); default `main`.
    """

    folder: str | None = field(default=None, metadata={
        "help": "The model folder to upload (weights, tokenizer, README.md card, plots, recipe)."})
    repo_id: str | None = field(default=None, metadata={"help": "Hub repository ORG/NAME (created if missing)."})
    private: bool = field(default=False, metadata={"help": "Create the repository private."})
    revision: str | None = field(default=None, metadata={"help": "Branch to commit to (default: main)."})

    def __post_init__(self):
        if not self.folder:
            raise ConfigError("folder is not set: give the model folder to push (--folder DIR)")
        from ..hub import check_repo_id

        check_repo_id(self.repo_id)


@dataclass
class PushResult(StageResult):
    """``metrics``: ``repo_id``, ``revision``, ``commit_url``, ``commit_oid``, ``files``, ``commit_message``;
    ``output_dir`` is ``None`` (the product is on the Hub)."""


@register_stage("push", config=PushConfig, inputs={"folder": "student"})
def run_push(config: PushConfig) -> PushResult:
    """Check the folder, the repo id, the card's license and the token, then ``create_repo`` + one ``upload_folder``
    commit (see :mod:`hf_minitron.hub`)."""
    from ..hub import push_folder

    return PushResult(stage="push", metrics=push_folder(config.folder, config.repo_id, private=config.private,
                                                        revision=config.revision))
