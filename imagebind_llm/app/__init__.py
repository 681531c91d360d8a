"""The Gradio app over the :class:`~imagebind_llm.pipeline.Pipeline`.

* :mod:`.handlers`: what the app does, as plain functions of the pipeline and the inputs (no gradio);
* :mod:`.ui`: the page (``build_demo``), its event functions and previews;
* :mod:`.server`: flags, environment variables, loading the model and serving (``main``).

Importing this package is cheap: gradio and the model are imported when first used.
"""

from __future__ import annotations


def build_demo(pipeline, **kwargs):
    """The app's ``gr.Blocks`` over ``pipeline``, queued, not launched (see :func:`.ui.build_demo`)."""
    from .ui import build_demo as _build_demo

    return _build_demo(pipeline, **kwargs)


def main(argv=None) -> int:
    """``python app.py [flags]`` (see :mod:`.server`)."""
    from .server import main as _main

    return _main(argv)


__all__ = ["build_demo", "main"]
