"""``python -m imagebind_llm``: see :mod:`imagebind_llm.cli`."""

import sys

from .cli import main

sys.exit(main())
