"""``python -m flexispeech`` runs the command line."""

import sys

from flexispeech.cli import main

sys.exit(main())
