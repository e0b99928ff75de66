"""``python -m attnkit``: the same as the ``attnkit`` console script."""

import sys

from .cli import main

sys.exit(main())
