"""``python -m lmpt`` (and ``torchrun -m lmpt``): the command line."""
import sys

from .cli import main

sys.exit(main())
