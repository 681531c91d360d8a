"""ImageBind-LLM in the browser: ``python app.py`` serves http://127.0.0.1:7860.

    python app.py                                   # the small untrained model, offline, on a CPU
    python app.py --preset imagebind-llm-7b --llama /path/to/llama   # the released weights
    python app.py --help                            # every flag and its environment variable

``build_demo(pipeline)`` builds the page without serving it (tests, notebooks, other servers).
This file is also the Hugging Face Spaces entry (``app_file`` in the README's front matter).
"""

import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home when offline

from imagebind_llm.app import build_demo, main

__all__ = ["build_demo", "main"]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
