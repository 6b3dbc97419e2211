"""``python -m openmm_cmt`` runs the command line (``torchrun ... -m openmm_cmt train ...``)."""

import sys

from openmm_cmt.cli import main

sys.exit(main())
