"""``python -m train`` (and ``torchrun ... -m train``)."""

import logging
import os
import sys

from imagebind_llm.errors import ImageBindLLMError

from . import main
from .config import ConfigError
from .data import BadDataError

try:
    main()
except KeyboardInterrupt:
    sys.exit(130)
except ConfigError as error:  # a wrong key, value or file: the message says which; no traceback needed
    sys.exit(f"python -m train: configuration error: {error}")
except (ImageBindLLMError, BadDataError) as error:  # weights that do not fit, data.strict's first bad record
    sys.exit(f"python -m train: error: {error}")

if int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1"))) > 1:
    # Under torchrun (or srun), skip the interpreter's teardown once the run has finished: the process group
    # is destroyed, but gloo's worker threads can still hold tensors whose release at
    # finalisation aborts the process now and then ("terminate called without an active
    # exception") after a run that succeeded. Everything is written and flushed by now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
