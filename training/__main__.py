"""``python -m training``: same as ``bodypart train``."""

import sys

from app.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
