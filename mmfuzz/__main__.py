"""``python -m mmfuzz``: the same as the ``mmfuzz`` command."""

import sys

from .cli import main

sys.exit(main())
