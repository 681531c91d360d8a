"""Scenes of the toy world and what is said about them.

A scene is ``count`` identical objects of one ``shape`` and ``colour``, all doing one
``motion``; every attribute has five values, so guessing is right one time in five. The
nuisances (positions, sizes, tints, noise, timing) are drawn from the scene's own seed, so a
scene renders the same in every run and in every modality.

Which modality carries which attribute (what a renderer shows):

=========  =====  ======  =====  ======
modality   shape  colour  count  motion
=========  =====  ======  =====  ======
image        x      x       x      x    (motion as a trail of faded copies)
video        x      x       x      x
audio        x              x           (each kind has its sound, once per object)
depth        x              x
thermal      x              x
imu                                x    (the motion of the objects)
point        x              x           (3D meshes / clouds)
=========  =====  ======  =====  ======
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SHAPES = ("ball", "cube", "pyramid", "ring", "cylinder")
COLOURS = ("red", "green", "blue", "yellow", "purple")
COUNTS = (1, 2, 3, 4, 5)
MOTIONS = ("still", "sliding", "bouncing", "spinning", "circling")
ATTRIBUTES = {"shape": SHAPES, "colour": COLOURS, "count": COUNTS, "motion": MOTIONS}

#: The attributes each modality shows (see the table in the module docstring).
CARRIED = {
    "image": ("shape", "colour", "count", "motion"),
    "video": ("shape", "colour", "count", "motion"),
    "audio": ("shape", "count"),
    "depth": ("shape", "count"),
    "thermal": ("shape", "count"),
    "imu": ("motion",),
    "point": ("shape", "count"),
}
MODALITIES = tuple(CARRIED)

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
PLURALS = {"ball": "balls", "cube": "cubes", "pyramid": "pyramids", "ring": "rings", "cylinder": "cylinders"}
MOTION_PHRASES = {
    "still": "standing still", "sliding": "sliding from side to side", "bouncing": "bouncing up and down",
    "spinning": "spinning in place", "circling": "moving in circles",
}
#: What each kind of object sounds like (audio.py synthesises these).
SOUNDS = {"ball": "a springy boing", "cube": "a dull knock", "pyramid": "a ringing bell",
          "ring": "a high whistle", "cylinder": "a rattle"}


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    count: int
    motion: str
    seed: int  # drives every nuisance of every rendering

    def value(self, attribute: str):
        return getattr(self, attribute)

    def rng(self, purpose: str) -> np.random.Generator:
        """A generator for one rendering purpose: the same scene gives the same draws."""
        return np.random.default_rng([self.seed, sum(map(ord, purpose))])


def sample_scenes(seed: int, n: int) -> list[Scene]:
    """``n`` scenes drawn uniformly (attributes independent), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    scenes = []
    for index in range(n):
        scenes.append(Scene(
            shape=SHAPES[rng.integers(len(SHAPES))], colour=COLOURS[rng.integers(len(COLOURS))],
            count=int(COUNTS[rng.integers(len(COUNTS))]), motion=MOTIONS[rng.integers(len(MOTIONS))],
            seed=int(rng.integers(2**31)) ^ index))
    return scenes


def all_scenes(seed: int = 0) -> list[Scene]:
    """Every attribute combination once (625 scenes)."""
    rng = np.random.default_rng(seed)
    return [Scene(s, c, n, m, int(rng.integers(2**31))) for s in SHAPES for c in COLOURS for n in COUNTS
            for m in MOTIONS]


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------


def noun(scene: Scene) -> str:
    return scene.shape if scene.count == 1 else PLURALS[scene.shape]


def caption(scene: Scene, attributes=("shape", "colour", "count", "motion")) -> str:
    """A one-sentence description naming the given attributes, e.g. "Two red balls are sliding
    from side to side." With fewer attributes it describes what a modality can tell."""
    words = []
    if "count" in attributes:
        words.append(NUMBER_WORDS[scene.count].capitalize())
    if "colour" in attributes:
        words.append(scene.colour)
    if "shape" in attributes:
        words.append(noun(scene) if "count" in attributes else scene.shape)
    elif "count" in attributes:
        words.append("objects" if scene.count > 1 else "object")
    else:
        words.append("Something" if "colour" not in attributes else "thing")
    text = " ".join(words)
    text = text[0].upper() + text[1:]
    if "motion" in attributes:
        verb = "is" if scene.count == 1 or "count" not in attributes else "are"
        text += f" {verb} {MOTION_PHRASES[scene.motion]}"
    return text + "."


def value_prompts(attribute: str) -> list[str]:
    """One caption per value of ``attribute`` naming only that attribute ("Ball.", "Cube.", ...),
    in the order of :data:`ATTRIBUTES`: the text side of zero-shot retrieval."""
    prompts = []
    for value in ATTRIBUTES[attribute]:
        fields = {"shape": SHAPES[0], "colour": COLOURS[0], "count": COUNTS[0], "motion": MOTIONS[0], "seed": 0}
        prompts.append(caption(Scene(**{**fields, attribute: value}), (attribute,)))
    return prompts


QUESTIONS = {
    "shape": ("What shape is the object?", "What kind of object is this?", "Which object do you see?",
              "What are the objects?"),
    "colour": ("What colour is the object?", "What colour are the objects?", "Which colour do you see?"),
    "count": ("How many objects are there?", "How many things can you count?", "Count the objects."),
    "motion": ("How is the object moving?", "What are the objects doing?", "Describe the motion."),
}
DESCRIBE = ("Describe the scene.", "What do you see?", "What is in this picture?")


def answer(scene: Scene, attribute: str) -> str:
    """The word that names ``attribute`` in ``scene`` ("two", "cubes", "red", "sliding")."""
    if attribute == "count":
        return NUMBER_WORDS[scene.count]
    if attribute == "shape":
        return noun(scene)
    return scene.value(attribute)


def answer_sentence(scene: Scene, attribute: str) -> str:
    """The answer as a short sentence, e.g. "They are red." The attribute then comes as the same
    word piece as in the captions of stage 1 ("▁red", after a space), not as a piece glued to
    "### Response:" that only question answering uses: what stage 1 taught carries over."""
    one = scene.count == 1
    if attribute == "count":
        return f"There {'is' if one else 'are'} {NUMBER_WORDS[scene.count]}."
    subject = "It is" if one else "They are"
    if attribute == "shape":
        return f"{subject} {'a ' if one else ''}{noun(scene)}."
    return f"{subject} {scene.value(attribute)}."


def answer_matches(text: str, scene: Scene, attribute: str) -> bool:
    """Exact attribute match: the answer names the scene's value and no other value of the attribute."""
    words = set(text.lower().replace(".", " ").replace(",", " ").split())
    if attribute == "count":
        names = {n: {NUMBER_WORDS[n], str(n)} for n in COUNTS}
    elif attribute == "shape":
        names = {s: {s, PLURALS[s]} for s in SHAPES}
    else:
        names = {v: {v} for v in ATTRIBUTES[attribute]}
    said = {value for value, forms in names.items() if words & forms}
    return said == {scene.value(attribute)}


@dataclass
class QA:
    question: str
    answer: str
    attribute: str | None = None  # None for a description


def phrasing_rng(seed: int) -> np.random.Generator:
    """The generator that draws question phrasings (and keyword orders) for data made with ``seed``.

    Not ``default_rng(seed)``: :func:`sample_scenes` draws the scenes from that very stream, and
    drawing the phrasings from it again ties them to the attributes (with seed 0, "How many
    objects are there?" was only ever answered "one" or "two", so a model learnt the wording
    instead of looking at the picture)."""
    return np.random.default_rng([seed, 0xF0])


def questions_for(scene: Scene, rng: np.random.Generator, attributes=("shape", "colour", "count", "motion"),
                  describe: bool = True) -> list[QA]:
    """One question per attribute (phrasing drawn from ``rng``) and optionally a description."""
    out = [QA(QUESTIONS[a][rng.integers(len(QUESTIONS[a]))], answer_sentence(scene, a), a)
           for a in attributes]
    if describe:
        out.append(QA(DESCRIBE[rng.integers(len(DESCRIBE))], caption(scene, attributes)))
    return out


@dataclass
class TextCorpus:
    """All sentences of the world, for the tokenizer and the language model."""

    lines: list[str] = field(default_factory=list)


def corpus(scenes: list[Scene], seed: int = 0) -> list[str]:
    """Captions, questions and answers of ``scenes`` in many phrasings (tokenizer/LM text).

    Besides the bare question/answer pairs (whose answer the text alone cannot predict), each
    scene also appears as a description after a shuffled keyword list, and as questions answered
    from the description given as "### Input:". Without such lines the language model has no
    reason to tell "red" from "blue" at its output, and then no injected feature can make it
    say either: the words of one attribute would share one output direction."""
    from ..prompts import CAPTION_INSTRUCTION, format_prompt

    rng = phrasing_rng(seed)
    lines = []
    for scene in scenes:
        description = caption(scene)
        sound = f"It sounds like {SOUNDS[scene.shape]}."
        lines.append(description)
        # Stage 1 asks for captions with this instruction: without such lines the model's loss
        # after it depended on the training run (0.8 or 2.2 nats a token), and at 2.2 stage 1
        # began with gradient spikes while it learnt the format.
        lines.append(format_prompt(CAPTION_INSTRUCTION) + description)
        lines.append(f"{description} {sound}")
        words = [answer(scene, a) for a in ATTRIBUTES]
        rng.shuffle(words)
        lines.append(f"{', '.join(words)}: {description}")
        for qa in questions_for(scene, rng):
            lines.append(format_prompt(qa.question) + qa.answer)
            if qa.attribute is not None:
                lines.append(format_prompt(qa.question, input=description) + qa.answer)
        lines.append(sound)
    return lines
