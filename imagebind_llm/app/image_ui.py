"""The image output of the Embedding arithmetic tab (the official demo's "Output type: Image").

:class:`ImageOutputUI` adds, when the app has an image generator (``--unclip``), an "Output
type" choice (Text / Image). In Image mode the question box gives way to a "Prompt" box (the
text it holds is carried over), the "Mix and ask" button to "Generate image", the answer to an
image, and image settings (steps, guidance, noise level, seed) appear. The event's api name is
``generate_image``. Without a generator every method does nothing, so the page is unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

import gradio as gr

from ..image_output import DEFAULT_GUIDANCE, DEFAULT_NOISE_LEVEL, DEFAULT_STEPS, ImageGenerator
from . import handlers as H
from . import image_handlers as IH
from . import ui


@ui.GPU
@ui.guarded
def generate_image(ctx: ui.AppContext, files: Any = None, texts: str = "", weights: str = "", prompt: str = "",
                   steps: float = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE,
                   noise_level: float = DEFAULT_NOISE_LEVEL, seed: float | None = -1, use_cache: bool = False,
                   cache_size: float = H.DEFAULTS["cache_size"],
                   cache_temperature: float = H.DEFAULTS["cache_temperature"],
                   cache_weight: float = H.DEFAULTS["cache_weight"], progress: gr.Progress = ui.PROGRESS):
    """Mix the inputs (the official image-output formula) and draw them with Stable unCLIP."""
    generator = IH.generator_for(ctx.key)
    settings = H.make_settings(use_cache=use_cache, cache_size=cache_size, cache_temperature=cache_temperature,
                               cache_weight=cache_weight)
    options = IH.make_image_options(steps, guidance, noise_level, seed)
    media = H.mix_media(files, texts, weights, ctx.max_bytes)

    def produce(stop):
        yield IH.generate_image(ctx.pipeline, generator, media, prompt, settings.cache, options, progress, stop)

    yield from H.in_thread(produce)


def switch_output(output_type: str, question: str, prompt: str):
    """Show the controls of the chosen output type. The question box and the prompt box act as
    one box (like the official demo's relabelled box): the text moves along."""
    image = output_type == "Image"
    if image:
        boxes = (gr.Textbox(visible=False), gr.Textbox(visible=True, value=question or ""))
    else:
        boxes = (gr.Textbox(visible=True, value=prompt or ""), gr.Textbox(visible=False))
    return (*boxes,  # question, prompt
            gr.Radio(visible=not image),  # normalisation (image output uses the official one)
            gr.Button(visible=not image), gr.Button(visible=not image),  # mix and ask, stop
            gr.Row(visible=image), gr.Accordion(visible=image),  # generate row, image settings
            gr.Textbox(visible=not image), gr.Image(visible=image))  # answer, image out


class ImageOutputUI:
    """The image-output components of the arithmetic tab (see the module docstring)."""

    def __init__(self, ctx: ui.AppContext, generator: ImageGenerator | None):
        self.ctx = ctx
        self.enabled = generator is not None
        if generator is not None:
            IH.register_generator(ctx.key, generator)

    def controls(self) -> None:
        """The output-type choice, the prompt box, the image settings and the generate buttons
        (placed where the question box is)."""
        if not self.enabled:
            return
        self.output_type = gr.Radio(list(IH.OUTPUT_TYPES), value="Text", label="Output type",
                                    info="Image: draw the mix with Stable unCLIP (weights divided by their sum)")
        self.prompt = gr.Textbox("", label="Prompt", lines=2, visible=False,
                                 placeholder="a painting of … (optional: the image follows the mix)")
        with gr.Accordion("Image settings", open=False, visible=False) as self.settings, gr.Row():
            self.steps = gr.Slider(*IH.IMAGE_RANGES["steps"], value=DEFAULT_STEPS, step=1, label="Steps")
            self.guidance = gr.Slider(*IH.IMAGE_RANGES["guidance"], value=DEFAULT_GUIDANCE, step=0.5,
                                      label="Guidance")
            self.noise_level = gr.Slider(0, 999, value=DEFAULT_NOISE_LEVEL, step=1, label="Noise level",
                                         info="noise added to the embedding: more variety")
            self.seed = gr.Number(-1, precision=0, label="Seed", info="-1: a new image every time")
        with gr.Row(visible=False) as self.generate_row:
            self.generate_button = gr.Button("Generate image", variant="primary")
            self.stop_button = gr.Button("⏹ Stop", variant="stop")

    def output(self) -> None:
        """The image output (placed under the answer box)."""
        if not self.enabled:
            return
        self.image = gr.Image(type="pil", format="png", label="Image out", visible=False, interactive=False,
                              buttons=["download"], height=480)

    def wire(self, *, files, texts, weights, fusion, question, ask_button, stop_ask, answer, cache_settings,
             model_event: dict) -> None:
        """The events: the output-type switch and ``generate_image``. ``cache_settings`` are the
        settings accordion's use-cache, cache size, temperature and weight components."""
        if not self.enabled:
            return
        self.output_type.change(
            switch_output, [self.output_type, question, self.prompt],
            [question, self.prompt, fusion, ask_button, stop_ask, self.generate_row, self.settings, answer,
             self.image], queue=False, api_visibility="private")
        event = gr.on(
            [self.generate_button.click, self.prompt.submit], functools.partial(generate_image, self.ctx),
            [files, texts, weights, self.prompt, self.steps, self.guidance, self.noise_level, self.seed,
             *cache_settings], [self.image], api_name=IH.API_NAME,
            api_description="Mix files and texts with weights (the official image-output formula) and draw the "
                            "mix with Stable unCLIP; returns the image.", preprocess=False, **model_event)
        self.stop_button.click(None, None, None, cancels=[event], queue=False, api_visibility="private")
        self.event = event
