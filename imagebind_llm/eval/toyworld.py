"""Evaluation on a fresh, held-out sample of the toy world (any seed).

    python -m imagebind_llm.eval toyworld --seed 7 --n 200

For every modality it renders ``n`` new scenes to files, runs them through the Pipeline's
preprocessing and ImageBind, and measures, on the attributes that modality carries
(``world.CARRIED``):

* **retrieval**: zero-shot top-1 of the embedding against a text prompt per attribute value
  (text is never paired with a non-image modality in training: this is the emergent alignment);
* **QA**: the language model's greedy answer to a question about the attribute, scored by exact
  attribute match (it names the right value and no other), with the visual cache off and on;
* **mixed**: an image of one scene plus the sound of another (weights 0.5/0.5), asked to
  describe the scene: how often the answer names both objects.

Chance is 20 % for every attribute (five values, drawn uniformly).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from ..embedding import Media
from ..generation import GenerationConfig, generate
from ..prompts import format_prompt
from ..toyworld.dataset import scene_of, write_scenes
from ..toyworld.world import ATTRIBUTES, CARRIED, DESCRIBE, MODALITIES, QUESTIONS, SHAPES, answer_matches, \
    sample_scenes, value_prompts
from ..visual_cache import CacheConfig

CHANCE = 0.2
GREEDY = GenerationConfig(max_new_tokens=12, temperature=0.0)  # an answer to one question
GREEDY_DESCRIPTION = GenerationConfig(max_new_tokens=40, temperature=0.0)  # room to describe two scenes


def _answers(pipeline, features: torch.Tensor, question: str, batch_size: int = 32,
             config: GenerationConfig = GREEDY) -> list[str]:
    model, tokenizer = pipeline.model, pipeline.tokenizer
    prompt = tokenizer.encode(format_prompt(question))
    out = []
    for start in range(0, len(features), batch_size):
        chunk = features[start:start + batch_size]
        with torch.inference_mode():
            visual = model.visual_query(chunk.to(model.device))
        ids = generate(model, [prompt] * len(chunk), config, visual_query=visual, eos_id=tokenizer.eos_id)
        out += [tokenizer.decode(i).strip() for i in ids]
    return out


def evaluate(pipeline, *, seed: int, n: int, folder: str | Path | None = None,
             modalities: Sequence[str] = MODALITIES, mixed: int | None = None, progress: bool = True) -> dict:
    """The evaluation results (a JSON-able dict; :func:`format_table` prints it)."""
    temporary = None
    if folder is None:
        temporary = tempfile.TemporaryDirectory(prefix="toyworld-eval-")
        folder = temporary.name
    scenes = sample_scenes(seed, n)
    records = write_scenes(Path(folder) / f"seed{seed}-n{n}", scenes, modalities, progress=progress)
    root = Path(folder) / f"seed{seed}-n{n}"
    results: dict = {"seed": seed, "n": n, "chance": CHANCE, "modalities": {}}
    unit_by_modality = {}
    for modality in modalities:
        media = [Media(modality, str(root / r["files"][modality])) for r in records]
        unit = pipeline.embed(media)
        unit_by_modality[modality] = unit
        truth = [scene_of(r) for r in records]
        entry: dict = {}
        for attribute in CARRIED[modality]:
            texts = pipeline.embed([Media("text", t) for t in value_prompts(attribute)])
            guess = (unit @ texts.T).argmax(dim=1).tolist()
            values = ATTRIBUTES[attribute]
            retrieval = sum(values[g] == s.value(attribute) for g, s in zip(guess, truth)) / n
            qa = {}
            for cache_on in (False, True):
                if cache_on and pipeline.cache is None:
                    continue
                features = pipeline.cache.blend(unit, CacheConfig()).enhanced if cache_on else unit
                answers = _answers(pipeline, features, QUESTIONS[attribute][0])
                qa["cache" if cache_on else "no_cache"] = sum(
                    answer_matches(a, s, attribute) for a, s in zip(answers, truth)) / n
                if not cache_on:
                    qa["examples"] = answers[:3]
            entry[attribute] = {"retrieval": retrieval, **qa}
        results["modalities"][modality] = entry
    if "image" in modalities and "audio" in modalities:
        results["mixed"] = _mixed(pipeline, records, root, mixed or n)
    if temporary is not None:
        temporary.cleanup()
    return results


def _mixed(pipeline, records: list[dict], root: Path, n: int) -> dict:
    """Image of scene i + sound of the next scene with another shape, 0.5 each."""
    pairs = []
    for i, record in enumerate(records):
        for other in records[i + 1:] + records[:i]:
            if other["shape"] != record["shape"]:
                pairs.append((record, other))
                break
        if len(pairs) == n:
            break
    features = []
    for image, sound in pairs:
        embeddings = pipeline.embed([Media("image", str(root / image["files"]["image"])),
                                     Media("audio", str(root / sound["files"]["audio"]))])
        features.append(torch.nn.functional.normalize(embeddings.mean(0), dim=-1))
    answers = _answers(pipeline, torch.stack(features), DESCRIBE[0], config=GREEDY_DESCRIPTION)

    def names(text: str, shape: str) -> bool:
        from ..toyworld.world import PLURALS

        words = set(text.lower().replace(".", " ").split())
        return bool(words & {shape, PLURALS[shape]})

    both = sum(names(a, i["shape"]) and names(a, s["shape"]) for a, (i, s) in zip(answers, pairs))
    image_only = sum(names(a, i["shape"]) and not names(a, s["shape"]) for a, (i, s) in zip(answers, pairs))
    sound_only = sum(names(a, s["shape"]) and not names(a, i["shape"]) for a, (i, s) in zip(answers, pairs))
    return {"pairs": len(pairs), "both": both / len(pairs), "image_only": image_only / len(pairs),
            "sound_only": sound_only / len(pairs), "examples": answers[:3], "shapes": list(SHAPES)}


def format_table(results: dict) -> str:
    lines = [f"toy world evaluation: seed {results['seed']}, n = {results['n']} per modality, "
             f"chance {results['chance']:.0%} for every attribute",
             f"{'modality':9s} {'attribute':9s} {'retrieval':>9s} {'QA':>6s} {'QA+cache':>9s} {'chance':>7s}"]
    for modality, entry in results["modalities"].items():
        for attribute, r in entry.items():
            cached = f"{r['cache']:9.0%}" if "cache" in r else f"{'-':>9s}"
            lines.append(f"{modality:9s} {attribute:9s} {r['retrieval']:9.0%} {r['no_cache']:6.0%} {cached} "
                         f"{results['chance']:7.0%}")
    if "mixed" in results:
        m = results["mixed"]
        lines.append(f"mixed image+sound (0.5 each), {m['pairs']} pairs: the description names both objects "
                     f"{m['both']:.0%}, only the image's {m['image_only']:.0%}, only the sound's {m['sound_only']:.0%}")
    return "\n".join(lines)


def build_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="python -m imagebind_llm.eval toyworld", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the rendered scenes (default 1)")
    parser.add_argument("--n", type=int, default=200, help="scenes per modality (default 200)")
    parser.add_argument("--preset", default="toyworld", help="the model to evaluate (default toyworld)")
    parser.add_argument("--modalities", default=",".join(MODALITIES),
                        help=f"comma-separated, from {','.join(MODALITIES)} (default: all)")
    parser.add_argument("--folder", help="keep the rendered files here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    unknown = sorted(set(modalities) - set(MODALITIES))
    if unknown or not modalities:
        parser.error(f"--modalities: unknown {', '.join(unknown)}; choose from {','.join(MODALITIES)}" if unknown
                     else "--modalities: name at least one")
    from ..presets import load_preset_pipeline

    pipeline = load_preset_pipeline(args.preset)
    results = evaluate(pipeline, seed=args.seed, n=args.n, folder=args.folder, modalities=modalities)
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0
