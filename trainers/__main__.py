"""``python -m trainers`` runs ``medbench-train`` (handy under ``accelerate launch -m trainers``)."""

import sys

from trainers.cli import main

sys.exit(main())
