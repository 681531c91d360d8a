"""train/ data side: the official formats, tokens/labels (with the two fixes), multi-turn,
bad data, the batch order, the image crop and the run configuration. Also holds the small
data generators the other train tests import."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from imagebind_llm.model import IGNORE_INDEX
from imagebind_llm.preprocess import PreprocessOptions
from imagebind_llm.prompts import CAPTION_INSTRUCTION, format_prompt
from imagebind_llm.tokenizer import Tokenizer
from train.config import STAGES, ConfigError, build_config, config_from_dict, read_yaml
from train.data import (
    DUMMY,
    BadDataError,
    BatchPlan,
    Collate,
    DataReport,
    ExampleDataset,
    encode_example,
    eval_batches,
    random_resized_crop,
    read_records,
    split_eval,
)

CAPTIONS = ["a red bird sits on the bridge", "two horses run toward the hills", "a dog sits near the river",
            "a small boat on the lake", "children play with a ball", "an old man reads a book",
            "a cat sleeps on the sofa", "a car waits in the rain"]


# ---------------------------------------------------------------------------------------------
# Data generators (imported by the other test_train_* modules)
# ---------------------------------------------------------------------------------------------


def write_images(folder: Path, count: int = len(CAPTIONS)) -> list[str]:
    """Small distinct RGB images (different sizes and dominant colours)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    names = []
    for i in range(count):
        pixels = (rng.random((40 + 8 * i, 56 + 4 * i, 3)) * 120).astype("uint8")
        pixels[..., i % 3] = 200 + i * 5
        name = f"img{i}.png"
        Image.fromarray(pixels).save(folder / name)
        names.append(name)
    return names


def write_captions(folder: Path, names: list[str], captions: list[str] = CAPTIONS, extra_rows: str = "") -> Path:
    path = folder / "captions.csv"
    path.write_text("url\tcaption\n" + "".join(f"{n}\t{c}\n" for n, c in zip(names, captions)) + extra_rows)
    return path


def llava_record(image: str, qa: list[tuple[str, str]]) -> dict:
    turns = []
    for q, a in qa:
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return {"image": image, "conversations": turns}


def write_conversations(folder: Path, names: list[str], extra: list | None = None) -> Path:
    records = [llava_record(n, [("<image>\nWhat is in the picture?", c.capitalize() + "."),
                                ("Is it outside?", "Yes." if i % 2 else "No.")])
               for i, (n, c) in enumerate(zip(names, CAPTIONS))]
    records.append({"instruction": "Give three tips for staying healthy.", "input": "",
                    "output": "Eat well, sleep enough and move every day."})
    records += extra or []
    path = folder / "conversations.json"
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def tokenizer(golden):
    config = json.loads((golden / "llama_adapter" / "adapter_config.json").read_text())
    return Tokenizer(golden / "llama_adapter" / config["tokenizer"])


def data_config(**overrides):
    return build_config("finetune", None, {"model.preset": "tiny-untrained", **overrides}).data


# ---------------------------------------------------------------------------------------------
# Tokens and labels
# ---------------------------------------------------------------------------------------------


def test_official_and_corrected_labels_differ_only_in_the_ignore_value(tokenizer):
    turns = [("Describe the image in detail.", None, "A dog sits near the river.")]
    official = encode_example(tokenizer, turns, 48, "official")
    corrected = encode_example(tokenizer, turns, 48, "corrected")
    assert torch.equal(official.tokens, corrected.tokens) and torch.equal(official.mask, corrected.mask)
    learnt = corrected.labels != IGNORE_INDEX
    assert torch.equal(official.labels[learnt], corrected.labels[learnt])
    assert (official.labels[~learnt] == 0).all()
    prompt = tokenizer.encode(format_prompt(turns[0][0]), bos=True, eos=False)
    full = tokenizer.encode(format_prompt(turns[0][0]) + turns[0][2], bos=True, eos=True)
    assert learnt.nonzero().flatten().tolist() == list(range(len(prompt), len(full)))
    assert corrected.tokens[len(full) - 1] == tokenizer.eos_id and corrected.answer_tokens == len(full) - len(prompt)


def test_a_real_unknown_token_is_learnt_in_corrected_labels(tokenizer):
    """Simulate a tokenizer that emits <unk> (id 0) inside an answer: with -100 as the ignore
    value it is a target; with the official 0 it silently is not."""
    from train.data import Item

    turns = [("Say it.", None, "ok fine")]
    rows = []
    for label_format in ("corrected", "official"):
        encoded = encode_example(tokenizer, turns, 64, label_format)
        ignore = IGNORE_INDEX if label_format == "corrected" else 0
        answer = int((encoded.labels[1:] != ignore).sum())
        position = int((encoded.labels != ignore).nonzero()[0])
        encoded.tokens[position] = encoded.labels[position] = tokenizer.unk_id
        batch = Collate(64, ignore, None)([Item(0, encoded)])
        rows.append((batch.targets(ignore), answer))
    (corrected, answer_corrected), (official, answer_official) = rows
    assert tokenizer.unk_id == 0 and corrected == answer_corrected and official == answer_official - 1


def test_truncation_and_a_prompt_longer_than_max_words(tokenizer):
    turns = [("Describe the image in detail.", None, "word " * 40)]
    prompt_len = len(tokenizer.encode(format_prompt(turns[0][0])))
    cut = encode_example(tokenizer, turns, prompt_len + 3, "corrected")
    assert cut.truncated and cut.answer_tokens == 3 and cut.mask.sum() == prompt_len + 3
    from train.data import NoAnswerTokens

    with pytest.raises(NoAnswerTokens, match="max_words"):
        encode_example(tokenizer, turns, prompt_len, "corrected")


def test_multi_turn_learns_every_answer_and_matches_the_chat_template(tokenizer):
    from imagebind_llm.prompts import Turn, chat_prompt

    qa = [("What is it?", "A dog."), ("Where?", "Near the river."), ("Weather?", "Sunny.")]
    encoded = encode_example(tokenizer, [(q, None, a) for q, a in qa], 128, "corrected")
    text = chat_prompt([Turn(q, a) for q, a in qa[:2]] + [Turn(qa[2][0])]) + qa[2][1]
    ids = tokenizer.encode(text, bos=True, eos=True)
    assert encoded.tokens[:len(ids)].tolist() == ids
    learnt = tokenizer.decode(encoded.labels[encoded.labels != IGNORE_INDEX].tolist())
    for _, answer in qa:
        assert answer.rstrip(".") in learnt
    for question, _ in qa:
        assert question not in learnt
    single = encode_example(tokenizer, [(qa[0][0], None, qa[0][1])], 128, "corrected")
    assert single.answer_tokens < encoded.answer_tokens


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def test_caption_csv_and_any_modality(tmp_path, tokenizer):
    names = write_images(tmp_path, 2)
    (tmp_path / "clip.wav").write_bytes(b"RIFF")
    path = write_captions(tmp_path, names + ["clip.wav"], CAPTIONS[:2] + ["a dog barks"])
    report = DataReport()
    records = read_records([str(path)], data_config(), report)
    assert [r.media[0].kind for r in records] == ["image", "image", "audio"]
    assert records[0].turns == ((CAPTION_INSTRUCTION, None, CAPTIONS[0]),)
    assert records[0].media[0].value == str(tmp_path / names[0]) and records[0].where == "line 2"
    assert not report.problems


def test_llava_alpaca_first_turn_and_multi_turn(tmp_path, tokenizer):
    names = write_images(tmp_path, 2)
    path = write_conversations(tmp_path, names, extra=[
        {"audio": "sound.wav", "instruction": "What do you hear?", "output": "A bell."},
        {"media": [{"kind": "text", "text": "a cat"}, {"path": names[0], "weight": 0.5}],
         "conversations": [{"from": "human", "value": "Mix?"}, {"from": "gpt", "value": "Yes."}]}])
    report = DataReport()
    first = read_records([str(path)], data_config(), report)
    multi = read_records([str(path)], data_config(**{"data.multi_turn": True}), DataReport())
    assert len(first) == 2 + 1 + 2 and not report.problems
    assert len(first[0].turns) == 1 and len(multi[0].turns) == 2
    alpaca = first[2]
    assert alpaca.media == () and alpaca.turns == (("Give three tips for staying healthy.", None,
                                                     "Eat well, sleep enough and move every day."),)
    assert first[3].media[0].kind == "audio"
    assert [m.kind for m in first[4].media] == ["text", "image"] and first[4].media[1].weight == 0.5
    # The Alpaca prompt is the template with the instruction as text (the official stores a tuple).
    encoded = encode_example(tokenizer, alpaca.turns, 96, "corrected")
    prompt = tokenizer.decode(encoded.tokens[encoded.mask.bool()].tolist())
    assert "('Give three tips" not in prompt and "### Instruction:\nGive three tips" in prompt
    stripped = read_records([str(path)], data_config(**{"data.strip_media_markers": True}), DataReport())
    assert "<image>" in first[0].turns[0][0] and "<image>" not in stripped[0].turns[0][0]


def test_malformed_records_are_counted_with_file_and_row(tmp_path):
    names = write_images(tmp_path, 2)
    bad_rows = "img1.png\t\nimg0.png\ttoo\tmany\nnoext\ta caption without a known media kind\n"
    csv_path = write_captions(tmp_path, names, CAPTIONS[:2], extra_rows=bad_rows)
    json_path = write_conversations(tmp_path, names, extra=[
        {"image": names[0], "conversations": [{"from": "gpt", "value": "swapped"}, {"from": "human", "value": "q"}]},
        {"image": names[0], "conversations": [{"from": "human", "value": "only a question"}]},
        {"instruction": "no output"},
        ["not", "an", "object"],
        {"instruction": "x", "output": 3}])
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text('{"instruction": "a", "output": "b"}\n{broken json\n')
    report = DataReport()
    records = read_records([str(csv_path), str(json_path), str(jsonl)], data_config(), report)
    assert len(records) == 2 + 3 + 1
    where = [(Path(p.file).name, p.where) for p in report.problems]
    assert where == [("captions.csv", "line 4"), ("captions.csv", "line 5"), ("captions.csv", "line 6"),
                     ("conversations.json", "record 3"), ("conversations.json", "record 4"),
                     ("conversations.json", "record 5"), ("conversations.json", "record 6"),
                     ("conversations.json", "record 7"), ("more.jsonl", "line 2")]
    assert "caption is empty" in report.problems[0].reason and "'human'" in report.problems[3].reason
    assert report.counts() == {"malformed": 9}
    with pytest.raises(BadDataError, match=r"captions.csv line 4"):
        read_records([str(csv_path)], data_config(), DataReport(strict=True))


def test_missing_and_corrupt_media_become_ignored_rows(tmp_path, tokenizer):
    names = write_images(tmp_path, 2)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    path = write_captions(tmp_path, names + ["broken.png", "missing.png"], CAPTIONS[:4])
    config = data_config(**{"data.max_words": 48})
    records = read_records([str(path)], config, DataReport())
    dataset = ExampleDataset(records, tokenizer, config, 0, PreprocessOptions())
    items = [dataset[(i, 0)] for i in range(4)]
    assert [i.problem is None for i in items] == [True, True, False, False]
    assert items[2].problem.category == "corrupt_media" and items[2].problem.where == "line 4"
    assert items[3].problem.category == "missing_media" and items[3].problem.media.endswith("missing.png")
    batch = Collate(48, IGNORE_INDEX, None)(items + [dataset[(DUMMY, 0)]])
    assert batch.good == 2 and len(batch.problems) == 2
    assert (batch.labels[2:] == IGNORE_INDEX).all() and (batch.visual == torch.tensor([1, 1, 0, 0, 0.])).all()
    assert batch.targets(IGNORE_INDEX) == sum(int((i.encoded.labels[1:] != IGNORE_INDEX).sum()) for i in items[:2])
    from train.data import check_media

    report = DataReport()
    kept = check_media(records, "decode", PreprocessOptions(), report)
    assert len(kept) == 2 and sorted(p.category for p in report.problems) == ["corrupt_media", "missing_media"]


# ---------------------------------------------------------------------------------------------
# Batch order and crops
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", [1, 3])
def test_batch_order_does_not_depend_on_the_number_of_processes(split):
    n, seed = 50, 3
    single = BatchPlan(n, batch_size=4, accum_iter=1, world=1, rank=0, seed=seed, split_epoch=split)
    pairs = [BatchPlan(n, batch_size=2, accum_iter=1, world=2, rank=r, seed=seed, split_epoch=split) for r in (0, 1)]
    accumulated = BatchPlan(n, batch_size=2, accum_iter=2, world=1, rank=0, seed=seed, split_epoch=split)
    for epoch in range(2):
        one = [sorted(b) for b in single.micro_batches(epoch)]
        two = [sorted(a + b) for a, b in zip(*(p.micro_batches(epoch) for p in pairs))]
        acc = list(accumulated.micro_batches(epoch))
        acc = [sorted(acc[i] + acc[i + 1]) for i in range(0, len(acc), 2)]
        assert one == two == acc
        flat = [i for b in one for i, _ in b]
        assert len(set(flat)) == len(flat) == single.steps_per_epoch * 4
    assert list(single.micro_batches(1, start_step=2)) == list(single.micro_batches(1))[2:]
    if split > 1:  # the sub-epochs of one pass are disjoint
        seen = [i for e in range(split) for b in single.micro_batches(e) for i, _ in b]
        assert len(seen) == len(set(seen))


def test_eval_shards_cover_everything_once_and_are_padded():
    shards = [eval_batches(7, 2, 3, r) for r in range(3)]
    assert [len(s) for s in shards] == [2, 2, 2]
    indices = [i for s in shards for b in s for i, _ in b if i != DUMMY]
    assert sorted(indices) == list(range(7))
    train, held = split_eval(list(range(20)), 0.2, 0)
    assert len(held) == 4 and sorted(train + held) == list(range(20)) and split_eval(list(range(20)), 0.2, 0)[1] == held


def test_random_resized_crop_is_seeded_and_in_range():
    from PIL import Image

    img = Image.fromarray((np.arange(256 * 240 * 3) % 251).astype("uint8").reshape(240, 256, 3))
    a = random_resized_crop(img, np.random.default_rng([0, 1, 2]), 224)
    b = random_resized_crop(img, np.random.default_rng([0, 1, 2]), 224)
    c = random_resized_crop(img, np.random.default_rng([0, 2, 2]), 224)
    assert a.size == (224, 224) and np.array_equal(np.array(a), np.array(b))
    assert not np.array_equal(np.array(a), np.array(c))


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


def test_stage_defaults_yaml_and_overrides(tmp_path):
    pre, fine = build_config("pretrain"), build_config("finetune")
    assert pre.trainable == ["bind_network", "gates", "prefix"] and fine.trainable == ["lora", "bias", "norm"]
    assert (pre.data.max_words, fine.data.max_words) == (96, 512) and not pre.model.bias_lora
    assert (pre.optim.blr, fine.optim.blr) == (1e-4, 1e-3)
    for stage, overrides in STAGES.items():
        config = build_config(stage).to_dict()
        for key, value in overrides.items():
            section, _, name = key.rpartition(".")
            assert (config[section][name] if section else config[name]) == value
    (tmp_path / "train.json").write_text("[]")
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text("stage: pretrain\nMETA: [train.json]\noptim: {blr: 2.0e-4, batch_size: 8}\n"
                         "model: {preset: tiny-untrained}\n")
    config = build_config(None, yaml_path, {"optim.batch_size": 2, "data.multi_turn": "true"})
    assert config.stage == "pretrain" and config.optim.blr == 2e-4 and config.optim.batch_size == 2
    assert config.data.train == [str(tmp_path / "train.json")] and config.data.multi_turn is True
    assert read_yaml(yaml_path)["optim.batch_size"] == 8
    assert config_from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="did you mean optim.blr"):
        build_config("finetune", None, {"optim.bllr": 1})
    bundled = Path(__file__).parents[1] / "train" / "configs"  # also found by name (they ship in the package)
    for name in ("laptop", "pretrain", "finetune"):
        assert read_yaml(name) == read_yaml(bundled / f"{name}.yaml")
    with pytest.raises(ConfigError, match=r"config file not found: lapt \(the bundled configs: finetune, laptop, "
                                          r"pretrain\)"):
        read_yaml("lapt")
    with pytest.raises(ConfigError, match="strategy"):
        build_config("finetune", None, {"strategy": "zero3"})
    with pytest.raises(ConfigError, match="bias_lora"):
        build_config("pretrain", None, {"trainable": "lora,gates"})
