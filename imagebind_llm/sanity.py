"""A fast check, before the first answer, that the base LLaMA is the one the adapter was trained on.

Loading already refuses a base of the wrong *shape* (:func:`imagebind_llm.weights.check_adapter_fits`).
This module catches what has the right shape but the wrong *content*: a wrong tokenizer, random
or shuffled weights, another model of the same size (LLaMA-2, plain LLaMA-7B instead of
Open-Chinese-LLaMA-7B). :func:`check_base_model` runs the language model (no visual input) on a
few fixed sentences, a few hundred tokens in all, and reads:

1. **vocabulary**: the tokenizer's piece count against the embedding rows (certain);
2. **tokenizer facts**: BOS/EOS/UNK ids, a few known pieces (the released presets know some of
   LLaMA's), how many pieces the probe text takes per character (a model's own tokenizer, made
   for such text, needs few: LLaMA roughly 0.25-0.3 for English) and that the plain-English probe
   needs almost no byte-fallback or unknown pieces;
3. **perplexity** of the probe text (per token, ``exp`` of the mean next-token cross-entropy
   after BOS). Above ``max_perplexity`` the base does not model language the way the adapter
   expects: an error. The cause is named by the other evidence, in this order: a perplexity near
   or above chance (above ``chance_fraction`` x vocabulary; a uniform guess scores exactly the
   vocabulary size) with the rows of the embedding and output matrices all of about the same
   length, as freshly initialised weights have (:func:`looks_untrained`) -> ``random_weights``
   (no tokenizer could help those); tokenizer facts that do not hold -> ``tokenizer``; else near
   or above chance -> ``shuffled_weights`` (trained tensors permuted, swapped or mixed up, which
   keeps their row lengths); in between -> ``damaged_weights`` (another model of the same shape,
   partly damaged tensors, or a tokenizer of the same size from another model);
4. **Chinese** (the ``7B_chinese`` preset): the probe's English sentences have Chinese
   translations. A model that knows both languages needs about as many nats for a sentence as
   for its translation (same content); an English-only model needs far more for the Chinese.
   The ratio ``NLL(Chinese) / NLL(English)`` over the pairs above ``max_chinese_ratio`` names
   plain LLaMA-7B instead of Open-Chinese-LLaMA-7B (a warning: the model works, but is not the
   one the adapter was trained on);
5. **config facts**: ``norm_eps``. LLaMA-1 (and Open-Chinese-LLaMA, built on it) use 1e-06 in
   params.json (``rms_norm_eps`` in a Hugging Face config.json); LLaMA-2 uses 1e-05 with the very
   same shapes and tokenizer. A different value names a LLaMA-2 checkpoint (a warning).

Every threshold is data of a :class:`Probe`, one per preset (:data:`PRESET_PROBES`).

How the thresholds were chosen (see also the README, "Run the released ImageBind-LLM"):

* ``toyworld``: measured on the toy world's language model as ``train/toyworld.py`` trains it
  (dim 128, 4 layers, 1200 steps): 2.4 (0.21 pieces per character, row-length spread 0.59),
  the same model with permuted embedding/output rows 29 million; and on the small LLaMAs of
  ``tests/test_sanity.py``: trained 2.5, permuted rows 1,700-83,000, a same-size tokenizer of
  other text 50,000, random weights 400-500 (chance: the vocabulary, 400-900). Limit 30 (12x
  the trained value), chance_fraction 0.15; the right tokenizer takes 0.21-0.33 pieces per
  character of the probe, a wrong one 0.74: limit 0.5.
* released presets (``imagebind-llm-7b``, ``-beta``): the real 7B models cannot be run here, so
  the limits are estimates with wide margins: a working 7B LLaMA scores roughly 10-60 per token
  on short plain sentences seen without context; wrong tokenizers and damaged weights score in
  the thousands (chance: 32000). Limit 300, "near chance" from 0.25 x 32000 = 8000; at most 0.4
  pieces per character of the English probe (LLaMA's tokenizer needs roughly 0.25-0.3 for
  plain English, an estimate). The
  Chinese ratio limit 1.6 is an estimate too (a bilingual model about 1.0-1.3, an English-only
  one about 2 or more); it only warns.

Both causes that only warn (plain LLaMA, LLaMA-2) are heuristics; the errors (vocabulary,
tokenizer facts, perplexity) mean the model cannot give meaningful answers. ``--skip-base-check``
(command line and app) skips the check.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .errors import CheckpointError

log = logging.getLogger(__name__)

SKIP_FLAG = "--skip-base-check"
MERGE_COMMAND = "python -m imagebind_llm.merge /path/to/llama/7B /path/to/llama/7B_chinese"

#: Cause codes, with the severity they have unless a probe says otherwise.
CAUSES = {
    "vocabulary": "error",        # tokenizer pieces != embedding rows
    "tokenizer": "error",         # special ids, known pieces, pieces per character, byte/unk pieces
    "random_weights": "error",    # perplexity near or above chance, rows like a fresh initialisation
    "shuffled_weights": "error",  # perplexity near or above chance, trained-looking rows
    "damaged_weights": "error",   # perplexity above the limit, below chance
    "plain_llama": "warning",     # Chinese much worse than English: LLaMA-7B instead of 7B_chinese
    "llama2": "warning",          # norm_eps of LLaMA-2
}


class BaseModelError(CheckpointError):
    """The base-model check failed; ``result`` holds the measurements."""

    def __init__(self, result: CheckResult):
        self.result = result
        super().__init__(result.report())


@dataclass(frozen=True)
class Probe:
    """What a base model must do to be accepted, and the thresholds (all per preset).

    ``texts`` are the probe sentences (plain text, each after BOS); their perplexity must not
    exceed ``max_perplexity``; above ``chance_fraction`` x vocabulary it counts as chance level.
    ``translations``, when given, are Chinese translations of the first ``len(translations)``
    texts, whose total NLL may be at most ``max_chinese_ratio`` times that of the originals.
    Tokenizer facts (used to name the cause of a failure): the special ids, ``pieces`` (token
    id -> the piece the expected tokenizer has there), ``max_tokens_per_char`` (pieces per
    character of the texts) and, for plain-ASCII texts (``ascii_text``), at most
    ``max_byte_fraction`` of byte-fallback or unknown pieces. ``norm_eps`` is the expected
    RMSNorm epsilon (None: not checked). ``severity`` overrides :data:`CAUSES` per cause."""

    name: str
    base: str  # the expected base, in words, for messages
    texts: tuple[str, ...]
    max_perplexity: float
    chance_fraction: float = 0.25
    translations: tuple[str, ...] = ()
    max_chinese_ratio: float | None = None
    bos_id: int | None = 1
    eos_id: int | None = 2
    unk_id: int | None = 0
    pieces: Mapping[int, str] = field(default_factory=dict)
    ascii_text: bool = True
    max_byte_fraction: float = 0.1
    max_tokens_per_char: float | None = None
    norm_eps: float | None = None
    hint: str = ""  # what to do when the check fails (how to get the right base)
    severity: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.texts:
            raise ValueError(f"probe {self.name}: no texts")
        if len(self.translations) > len(self.texts):
            raise ValueError(f"probe {self.name}: more translations than texts")
        if self.translations and self.max_chinese_ratio is None:
            raise ValueError(f"probe {self.name}: translations need max_chinese_ratio")
        unknown = set(self.severity) - set(CAUSES)
        if unknown or not set(self.severity.values()) <= {"error", "warning"}:
            raise ValueError(f"probe {self.name}: bad severity {dict(self.severity)}")

    def severity_of(self, cause: str) -> str:
        return self.severity.get(cause, CAUSES[cause])


@dataclass
class Finding:
    cause: str
    severity: str  # "error" or "warning"
    message: str


@dataclass
class CheckResult:
    """What :func:`check_base_model` measured. ``ok`` is False when any finding is an error;
    ``cause`` is the first error's code (else the first warning's, else None)."""

    probe: str
    base: str
    findings: list[Finding] = field(default_factory=list)
    perplexity: float | None = None
    max_perplexity: float | None = None
    chance: int | None = None
    chinese_ratio: float | None = None
    tokens: int = 0
    seconds: float = 0.0
    hint: str = ""

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[str]:
        return [f"base-model check: {f.message}" for f in self.findings if f.severity == "warning"]

    @property
    def cause(self) -> str | None:
        ordered = self.errors or self.findings
        return ordered[0].cause if ordered else None

    def summary(self) -> str:
        parts = [f"probe {self.probe!r}", f"{self.tokens} tokens", f"{self.seconds:.1f} s"]
        if self.perplexity is not None:
            parts.insert(1, f"perplexity {self.perplexity:.1f} (limit {self.max_perplexity:g}, chance {self.chance})")
        if self.chinese_ratio is not None:
            parts.insert(2, f"Chinese/English NLL ratio {self.chinese_ratio:.2f}")
        return ", ".join(parts)

    def report(self) -> str:
        """A few lines for users: verdict, measurements, likely cause, what to do."""
        state = "passed" if self.ok else "FAILED"
        lines = [f"base-model check {state} (expects {self.base}): {self.summary()}"]
        for index, finding in enumerate(self.findings):  # errors first, the likeliest cause first
            label = ("likely cause" if index == 0 else "also") if finding.severity == "error" else "warning"
            lines.append(f"  {label} [{finding.cause}]: {finding.message}")
        if not self.ok:
            if self.hint:
                lines.append(f"  {self.hint}")
            lines.append(f"  (to answer anyway, pass {SKIP_FLAG})")
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise BaseModelError(self)


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


def _language_model(model: torch.nn.Module) -> torch.nn.Module:
    """The LLaMA of an :class:`~imagebind_llm.model.ImageBindLLM` (run without visual input), or a
    :class:`~imagebind_llm.llama.Llama` itself."""
    return getattr(model, "llama", model)


def sentence_nll(model: torch.nn.Module, sequences: Sequence[Sequence[int]],
                 pad_id: int = 0) -> list[tuple[float, int]]:
    """(summed next-token cross-entropy in nats, predicted tokens) per sequence, each starting
    with BOS (which is not predicted). One batched forward, right-padded (the causal mask keeps
    the padding out of the real positions)."""
    llama = _language_model(model)
    device = llama.tok_embeddings.weight.device
    length = max(len(s) for s in sequences)
    tokens = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    targets = torch.full((len(sequences), length), -100, dtype=torch.long)
    for row, seq in enumerate(sequences):
        tokens[row, :len(seq)] = torch.tensor(seq)
        targets[row, :len(seq) - 1] = torch.tensor(seq[1:])
    with torch.inference_mode():
        logits = llama(tokens.to(device)).float().cpu()
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                          reduction="none").reshape(targets.shape)
    return [(float(nll[row].sum()), len(seq) - 1) for row, seq in enumerate(sequences)]


def _tokenizer_findings(tokenizer, probe: Probe, encoded: list[list[int]]) -> tuple[list[str], list[str]]:
    """What the probe's facts say is wrong with the tokenizer: (special ids, other evidence)."""
    special = []
    for name, expected in (("BOS", probe.bos_id), ("EOS", probe.eos_id), ("UNK", probe.unk_id)):
        actual = getattr(tokenizer, f"{name.lower()}_id")
        if expected is not None and actual != expected:
            special.append(f"its {name} id is {actual}, {probe.base} uses {expected}")
    other = []
    sp = getattr(tokenizer, "sp", None)
    if sp is not None:
        wrong = [f"id {i} is {sp.IdToPiece(i)!r}, not {piece!r}" for i, piece in probe.pieces.items()
                 if i < tokenizer.n_words and sp.IdToPiece(i) != piece]
        if wrong:
            other.append("its pieces differ from the expected tokenizer's (" + "; ".join(wrong[:3]) + ")")
        if probe.ascii_text:
            pieces = [t for ids in encoded for t in ids[1:]]
            odd = sum(1 for t in pieces if sp.IsByte(t) or sp.IsUnknown(t))
            if pieces and odd / len(pieces) > probe.max_byte_fraction:
                other.append(f"it spells {odd} of the {len(pieces)} pieces of the plain-English probe text as bytes "
                             "or unknown pieces (the model's own tokenizer knows these words)")
        if probe.max_tokens_per_char is not None:
            pieces_count = sum(len(ids) - 1 for ids in encoded)
            chars = sum(len(text) for text in probe.texts)
            if pieces_count > probe.max_tokens_per_char * chars:
                other.append(f"it needs {pieces_count} pieces for the {chars} characters of the probe text (more than "
                             f"{probe.max_tokens_per_char:g} per character; the model's own tokenizer, made for such "
                             "text, needs fewer)")
    return special, other


def embedding_spread(model: torch.nn.Module) -> float:
    """How much the row lengths of the token embedding and of the output matrix vary: the larger
    of their coefficients of variation. Rows of independent random values (any fresh
    initialisation) all have about the same length, CV ~ 1/sqrt(2 x dim); a trained model's rows
    differ (frequent and rare tokens), CV several times larger. Permuting, shuffling or
    exchanging trained tensors keeps the trained spread."""
    llama = _language_model(model)
    spreads = []
    for module in (llama.tok_embeddings, llama.output):
        weight = getattr(module, "weight", None)  # a quantised output head has none in floating point
        if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or weight.ndim != 2:
            continue
        norms = weight.detach().float().norm(dim=1)
        spreads.append(float(norms.std() / norms.mean().clamp_min(1e-12)))
    return max(spreads)


def looks_untrained(model: torch.nn.Module) -> bool:
    """True when the embedding and output rows are as uniform in length as random values are:
    spread below 2 / sqrt(2 x dim), twice what independent random values give."""
    dim = _language_model(model).tok_embeddings.weight.shape[1]
    return embedding_spread(model) < 2.0 / math.sqrt(2.0 * dim)


def check_base_model(model: torch.nn.Module, tokenizer, probe: Probe) -> CheckResult:
    """Run ``probe`` on ``model`` (an ImageBindLLM, without visual input, or a Llama) with
    ``tokenizer``; see the module docstring. Never raises for a bad model: the result says what
    was found (:meth:`CheckResult.raise_if_failed` turns a failure into :class:`BaseModelError`)."""
    started = time.perf_counter()
    llama = _language_model(model)
    rows = int(llama.tok_embeddings.weight.shape[0])
    result = CheckResult(probe=probe.name, base=probe.base, max_perplexity=probe.max_perplexity, chance=rows,
                         hint=probe.hint)

    def add(cause: str, message: str) -> None:
        result.findings.append(Finding(cause, probe.severity_of(cause), message))

    def done() -> CheckResult:
        result.findings.sort(key=lambda f: f.severity != "error")  # errors first, stable otherwise
        result.seconds = time.perf_counter() - started
        return result

    eps = getattr(getattr(llama, "config", None), "norm_eps", None)
    if probe.norm_eps is not None and eps is not None and not math.isclose(eps, probe.norm_eps, rel_tol=1e-3):
        which = "LLaMA-2's value" if math.isclose(eps, 1e-5, rel_tol=1e-3) else "not the expected value"
        add("llama2", f"the base's norm_eps is {eps:g} ({which}; {probe.base} uses {probe.norm_eps:g}, in params.json "
                      "or as rms_norm_eps in config.json): this looks like a LLaMA-2 checkpoint, which has the same "
                      "shapes and tokenizer as LLaMA-1 but other weights; the adapter was trained on "
                      f"{probe.base}")
    if tokenizer.n_words != rows:
        add("vocabulary", f"the tokenizer has {tokenizer.n_words} pieces but the model's embedding has {rows} rows: "
                          "wrong tokenizer.model for these weights (or weights of another model)")
        return done()

    texts = list(probe.texts) + list(probe.translations)
    encoded = [tokenizer.encode(text, bos=True, eos=False) for text in texts]
    pad = tokenizer.eos_id if 0 <= tokenizer.eos_id < rows else 0
    measured = sentence_nll(model, encoded, pad_id=pad)
    result.tokens = sum(len(ids) for ids in encoded)
    main = measured[:len(probe.texts)]
    nll, count = sum(m[0] for m in main), sum(m[1] for m in main)
    result.perplexity = math.exp(min(nll / max(count, 1), 700.0))
    special, other = _tokenizer_findings(tokenizer, probe, encoded[:len(probe.texts)])
    limit = f"a working base scores below {probe.max_perplexity:g}"

    if result.perplexity > probe.max_perplexity:
        # Freshly initialised weights are named first, whatever else is wrong: no tokenizer can make
        # them work. (The untrained preset's tokenizer, trained on this package's docstrings, needs
        # about 0.5 pieces per character of the toy world's text, at that probe's limit.)
        near_chance = result.perplexity >= probe.chance_fraction * rows
        untrained = near_chance and looks_untrained(model)
        if untrained:
            add("random_weights", "random (untrained) weights: the probe text's perplexity is "
                                  f"{result.perplexity:.1f}, "
                                  f"near or above chance ({rows}, the vocabulary size; {limit}), and the rows of the "
                                  "embedding and output matrices all have about the same length, as freshly "
                                  "initialised weights do "
                                  f"(spread {embedding_spread(model):.3f}). A model built without its weights, or "
                                  "an empty or wrong file")
        if special or other:
            add("tokenizer", f"wrong tokenizer: {'; '.join(special + other)}. The probe text's perplexity is "
                             f"{result.perplexity:.1f} ({limit}). Use the tokenizer.model that belongs to "
                             f"{probe.base}")
        elif not untrained:  # the weights look trained: mixed up or damaged
            if near_chance:
                add("shuffled_weights",
                    f"shuffled or mixed-up weights: the probe text's perplexity is {result.perplexity:.1f}, near "
                    f"or above chance ({rows}, the vocabulary size; {limit}), although the weights look trained "
                    f"(row-length spread {embedding_spread(model):.3f}). Tensors permuted, swapped between layers "
                    "or taken from different models (a bad conversion or merge), or a tokenizer of the same size "
                    "whose pieces are in another order")
            else:
                add("damaged_weights",
                    f"wrong or damaged weights: the probe text's perplexity is {result.perplexity:.1f}, above what "
                    f"it should be ({limit}) but under chance ({rows}): a different model of the same shape, partly "
                    "damaged or shuffled tensors (a bad conversion), or a tokenizer of the same size that belongs "
                    "to another model")
    elif special:
        add("tokenizer", f"wrong tokenizer: {'; '.join(special)} (generation would not stop at the right token)")

    if probe.translations and result.perplexity <= probe.max_perplexity:
        pairs = len(probe.translations)
        english = sum(m[0] for m in measured[:pairs])
        chinese = sum(m[0] for m in measured[len(probe.texts):])
        result.chinese_ratio = chinese / max(english, 1e-6)
        if result.chinese_ratio > probe.max_chinese_ratio:  # type: ignore[operator]
            add("plain_llama", f"the model needs {result.chinese_ratio:.1f}x as many nats for the Chinese probe "
                               "sentences as for their English originals (a model that knows both languages needs "
                               f"about as many; limit {probe.max_chinese_ratio:g}): this looks like Meta's plain "
                               f"LLaMA-7B, not {probe.base}, which the adapter was trained on. Build it with: "
                               f"{MERGE_COMMAND}")
    return done()


# ---------------------------------------------------------------------------------------------
# The probes of the presets
# ---------------------------------------------------------------------------------------------

#: Plain English sentences (written for this check) and their Chinese translations.
ENGLISH_SENTENCES = (
    "The sun rises in the east and sets in the west.",
    "She opened the window to let some fresh air into the room.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "My brother likes to read books about history and science.",
    "It was raining heavily, so we decided to stay at home.",
    "A small dog is sitting on the grass next to a red ball.",
)
CHINESE_SENTENCES = (
    "太阳从东方升起，从西方落下。",
    "她打开窗户，让新鲜空气进入房间。",
    "在海平面上，水在一百摄氏度时沸腾。",
    "我的哥哥喜欢读关于历史和科学的书。",
    "雨下得很大，所以我们决定待在家里。",
    "一只小狗坐在草地上，旁边有一个红色的球。",
)
#: Pieces of LLaMA's tokenizer.model (32000 pieces, shared by LLaMA-1, LLaMA-2 and
#: Open-Chinese-LLaMA): the special pieces, the first and last byte pieces, and common words.
LLAMA_PIECES = {0: "<unk>", 1: "<s>", 2: "</s>", 3: "<0x00>", 258: "<0xFF>", 278: "▁the", 450: "▁The"}

LLAMA_7B_CHINESE_PROBE = Probe(
    name="llama-7b-chinese", base="Open-Chinese-LLaMA-7B (7B_chinese)", texts=ENGLISH_SENTENCES,
    translations=CHINESE_SENTENCES, max_perplexity=300.0, chance_fraction=0.25, max_chinese_ratio=1.6,
    pieces=LLAMA_PIECES, max_tokens_per_char=0.4, norm_eps=1e-6,
    hint=("The imagebind-llm-7b adapter needs Open-Chinese-LLaMA-7B: Meta's LLaMA-7B plus the Open-Chinese-LLaMA "
          f"delta, built with: {MERGE_COMMAND}"))
LLAMA_7B_PROBE = Probe(
    name="llama-7b", base="Meta's LLaMA-7B (7B)", texts=ENGLISH_SENTENCES, max_perplexity=300.0,
    chance_fraction=0.25, pieces=LLAMA_PIECES, max_tokens_per_char=0.4, norm_eps=1e-6,
    hint="The imagebind-llm-7b-beta adapter needs Meta's LLaMA-7B (7B folder: params.json, consolidated.00.pth, "
         "and LLaMA's tokenizer.model).")

#: Scenes whose sentences make the toy-world probe (fixed, so the probe never changes).
_TOY_SCENES = (("ball", "red", 2, "sliding"), ("cube", "blue", 1, "spinning"), ("pyramid", "green", 3, "still"),
               ("ring", "yellow", 4, "bouncing"), ("cylinder", "purple", 1, "circling"))
_TOY_FALLBACK = ("Two red balls are sliding from side to side.", "One blue cube is spinning in place.",
                 "Three green pyramids are standing still.", "Four yellow rings are bouncing up and down.",
                 "One purple cylinder is moving in circles.", "It sounds like a springy boing.")


def toyworld_sentences() -> tuple[str, ...]:
    """A few sentences of the toy world, in its own wording (:mod:`imagebind_llm.toyworld.world`):
    captions of fixed scenes and what two of them sound like."""
    try:
        from .toyworld import world

        scenes = [world.Scene(shape, colour, count, motion, seed=0) for shape, colour, count, motion in _TOY_SCENES]
        lines = [world.caption(scene) for scene in scenes]
        lines += [f"It sounds like {world.SOUNDS[s.shape]}." for s in scenes[:2]]
        return tuple(lines)
    except (ImportError, AttributeError, KeyError, TypeError) as error:  # the world's text changed shape
        log.debug("toy-world probe from the fixed sentences (%s)", error)
        return _TOY_FALLBACK


def toyworld_probe() -> Probe:
    return Probe(name="toyworld", base="the toy-world language model", texts=toyworld_sentences(),
                 max_perplexity=30.0, chance_fraction=0.15, max_tokens_per_char=0.5,
                 hint="Rebuild or reinstall the toy-world model: python -m train.toyworld --install")


#: Preset name -> its probe (a callable, so the toy world's text is read only when needed).
#: Presets not listed (tiny-untrained: random by design; custom files) are not checked.
PRESET_PROBES: dict[str, Callable[[], Probe]] = {
    "imagebind-llm-7b": lambda: LLAMA_7B_CHINESE_PROBE,
    "imagebind-llm-7b-beta": lambda: LLAMA_7B_PROBE,
    "toyworld": toyworld_probe,
}


def probe_for_preset(name: str | None) -> Probe | None:
    """The probe a preset asks for, or None (no check)."""
    factory = PRESET_PROBES.get(name or "")
    return factory() if factory is not None else None


def register_probe(preset: str, probe: Probe | Callable[[], Probe]) -> None:
    """Make a preset's pipelines run ``probe`` before their first answer."""
    PRESET_PROBES[preset] = probe if callable(probe) else (lambda: probe)


def attach_probe(pipeline, preset: str | None, enabled: bool = True):
    """Give ``pipeline`` the preset's probe (run before its first answer); returns the pipeline."""
    pipeline.base_check = probe_for_preset(preset) if enabled else None
    return pipeline
