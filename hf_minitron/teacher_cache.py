"""Deprecated alias of :mod:`hf_minitron.distill.teacher_cache` (kept for one release).

The offline teacher cache moved next to the trainer that reads it; its top-k loss is
``hf_minitron.distill.losses.topk_distillation_loss`` and training from it is ``hf_minitron.distill.teacher_sources
.CachedTeacher``. Import from there.
"""

from __future__ import annotations

import warnings

from .distill.losses import topk_distillation_loss  # noqa: F401
from .distill.teacher_cache import *  # noqa: F401,F403
from .distill.teacher_cache import (  # noqa: F401  (private names some callers used)
    FORMAT_VERSION, KINDS, LOGPROB_DTYPES, MANIFEST_FILE, SETTINGS_FILE, TAIL_KINDS, data_fingerprint,
    teacher_identity,
)
from .distill.teacher_sources import prepare_cache_training  # noqa: F401

warnings.warn("hf_minitron.teacher_cache moved to hf_minitron.distill.teacher_cache; the old module is an alias for "
              "one release", DeprecationWarning, stacklevel=2)
