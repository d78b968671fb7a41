"""``python -m medbench`` is the ``medbench`` command (``accelerate launch -m medbench train ...`` needs it)."""

import sys

from medbench.cli import main

sys.exit(main())
