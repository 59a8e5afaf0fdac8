"""``python -m hf_minitron.cli``: the same as the ``hf-minitron`` command (for ``accelerate launch -m``)."""

import sys

from . import main

sys.exit(main())
