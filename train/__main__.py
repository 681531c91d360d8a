"""``python -m train`` (and ``torchrun ... -m train``)."""

import sys

from . import main
from .config import ConfigError

try:
    main()
except KeyboardInterrupt:
    sys.exit(130)
except ConfigError as error:  # a wrong key or value: the message says which; no traceback needed
    sys.exit(f"python -m train: configuration error: {error}")
