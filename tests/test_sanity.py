"""The base-model check (imagebind_llm/sanity.py): a tiny LLaMA trained here for a few hundred
steps on a small fixed corpus (English and Chinese captions of a toy scene world) passes its
probe; the same model with shuffled weights, random weights, a wrong tokenizer, LLaMA-2's
norm_eps or an English-only Chinese probe is refused or warned about, each with its cause
named. The Pipeline runs the check once before the first answer; ``--skip-base-check`` and the
app's variable switch it off. The shipped toy-world model is checked when it is installed."""

from __future__ import annotations

import copy
import io
import itertools
import random

import pytest
import torch

from imagebind_llm import sanity
from imagebind_llm.config import AdapterConfig, LlamaConfig
from imagebind_llm.llama import Llama
from imagebind_llm.sanity import BaseModelError, Probe, check_base_model
from imagebind_llm.tokenizer import Tokenizer

SHAPES = {"ball": ("balls", "球"), "cube": ("cubes", "方块"), "ring": ("rings", "圆环"), "cone": ("cones", "圆锥"),
          "star": ("stars", "星星")}
COLOURS = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "white": "白色"}
COUNTS = {1: ("One", "一个"), 2: ("Two", "两个"), 3: ("Three", "三个"), 4: ("Four", "四个"), 5: ("Five", "五个")}
MOTIONS = {"rolling slowly": "慢慢地滚动", "spinning in place": "在原地旋转", "standing still": "静止不动",
           "bouncing up and down": "上下跳动", "moving in circles": "绕着圈移动"}
HELD_OUT = [("ball", "red", 2, "rolling slowly"), ("cube", "blue", 1, "spinning in place"),
            ("ring", "green", 3, "standing still"), ("cone", "yellow", 4, "bouncing up and down"),
            ("star", "white", 5, "moving in circles"), ("ball", "green", 1, "moving in circles")]


def english(shape, colour, count, motion) -> str:
    noun = shape if count == 1 else SHAPES[shape][0]
    verb = "is" if count == 1 else "are"
    return f"{COUNTS[count][0]} {colour} {noun} {verb} {motion}."


def chinese(shape, colour, count, motion) -> str:
    return f"{COUNTS[count][1]}{COLOURS[colour]}的{SHAPES[shape][1]}{MOTIONS[motion]}。"


def corpus() -> list[str]:
    scenes = [s for s in itertools.product(SHAPES, COLOURS, COUNTS, MOTIONS) if s not in HELD_OUT]
    return [english(*s) for s in scenes] + [chinese(*s) for s in scenes]


def train_tokenizer(lines: list[str], pieces: int) -> bytes:
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=pieces, model_type="bpe", byte_fallback=True,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    return model.getvalue()


def config_for(tokenizer: Tokenizer, **overrides) -> LlamaConfig:
    return LlamaConfig(dim=64, n_layers=2, n_heads=4, vocab_size=tokenizer.n_words, multiple_of=32, max_seq_len=64,
                       **overrides)


def new_llama(config: LlamaConfig) -> Llama:
    model = Llama(config, AdapterConfig(bias_lora=False, query_layer=1, imagebind_dim=8))
    for name, p in model.named_parameters():
        if p.ndim == 2:
            torch.nn.init.normal_(p, std=0.02)  # the toy world's language-model initialisation
    return model


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    path.write_bytes(train_tokenizer(corpus(), 500))
    return Tokenizer(path)


@pytest.fixture(scope="module")
def trained(tokenizer) -> Llama:
    """A 2-layer LLaMA trained for 150 steps on the corpus (about 10 s on 2 CPU cores; the
    probe's perplexity ends near 2.5, the Chinese/English ratio near 1)."""
    seqs = [tokenizer.encode(line, bos=True, eos=True) for line in corpus()]
    generator = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = new_llama(config_for(tokenizer))
        optimizer = torch.optim.AdamW([p for n, p in model.named_parameters() if "gate" not in n], lr=5e-3)
        rng = random.Random(0)
        for _ in range(150):
            batch = rng.sample(seqs, 24)
            length = max(map(len, batch))
            tokens = torch.zeros(len(batch), length, dtype=torch.long)
            targets = torch.full((len(batch), length), -100)
            for row, seq in enumerate(batch):
                tokens[row, :len(seq)] = torch.tensor(seq)
                targets[row, :len(seq) - 1] = torch.tensor(seq[1:])
            loss = torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), targets.flatten(), ignore_index=-100)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        torch.random.set_rng_state(generator)
    return model.eval().requires_grad_(False)


def probe(**overrides) -> Probe:
    """The corpus's probe: held-out English captions, and their Chinese translations. The
    thresholds are the toy-world preset's (sanity.toyworld_probe)."""
    values = {"name": "test", "base": "the test language model", "texts": tuple(english(*s) for s in HELD_OUT),
              "translations": tuple(chinese(*s) for s in HELD_OUT[:4]), "max_chinese_ratio": 1.6,
              "max_perplexity": 30.0, "chance_fraction": 0.15, "max_tokens_per_char": 0.5, "norm_eps": 1e-6,
              "hint": "(test hint)"}
    values.update(overrides)
    return Probe(**values)


def variant(model: Llama, change) -> Llama:
    out = copy.deepcopy(model)
    state = {k: v.clone() for k, v in out.state_dict().items()}
    change(state)
    out.load_state_dict(state)
    return out


# ---------------------------------------------------------------------------------------------
# The check on a model that learnt its text, and on broken variants of it
# ---------------------------------------------------------------------------------------------


def test_a_model_that_learnt_its_text_passes(trained, tokenizer):
    result = check_base_model(trained, tokenizer, probe())
    assert result.ok and result.findings == [] and result.cause is None
    assert result.perplexity < 6, result.summary()  # measured about 2-3 (limit 30, chance 500)
    assert result.chinese_ratio < 1.4, result.summary()  # it knows both languages: about 1
    assert 50 < result.tokens < 400 and result.seconds < 5
    assert "passed" in result.report()
    result.raise_if_failed()


def test_shuffled_embedding_and_output_rows_are_named_shuffled(trained, tokenizer):
    generator = torch.Generator().manual_seed(1)

    def permute_rows(state):
        order = torch.randperm(state["tok_embeddings.weight"].shape[0], generator=generator)
        state["tok_embeddings.weight"] = state["tok_embeddings.weight"][order]
        state["output.weight"] = state["output.weight"][order]

    result = check_base_model(variant(trained, permute_rows), tokenizer, probe())
    assert not result.ok and result.cause == "shuffled_weights", result.report()
    assert result.perplexity > 0.15 * tokenizer.n_words
    report = result.report()
    assert "FAILED" in report and "shuffled" in report and "(test hint)" in report and "--skip-base-check" in report
    with pytest.raises(BaseModelError, match="shuffled_weights") as info:
        result.raise_if_failed()
    assert info.value.result is result


def test_tensors_exchanged_between_layers_and_matrices_fail(trained, tokenizer):
    def exchange(state):
        state["tok_embeddings.weight"], state["output.weight"] = state["output.weight"], state["tok_embeddings.weight"]
        for layer in (0, 1):
            prefix = f"layers.{layer}.attention."
            query, out = prefix + "wq.weight", prefix + "wo.weight"
            state[query], state[out] = state[out], state[query]
        first, second = "layers.0.feed_forward.w1.weight", "layers.1.feed_forward.w1.weight"
        state[first], state[second] = state[second], state[first]

    result = check_base_model(variant(trained, exchange), tokenizer, probe())
    assert not result.ok and result.cause in ("shuffled_weights", "damaged_weights"), result.report()
    assert "shuffled" in result.report()


@pytest.mark.parametrize("init", ["training", "default"])
def test_random_weights_are_named_random(tokenizer, init):
    torch.manual_seed(3)
    model = new_llama(config_for(tokenizer)) if init == "training" else Llama(
        config_for(tokenizer), AdapterConfig(bias_lora=False, query_layer=1, imagebind_dim=8))
    result = check_base_model(model.eval(), tokenizer, probe())
    assert not result.ok and result.cause == "random_weights", result.report()
    assert "random (untrained) weights" in result.report()
    assert sanity.looks_untrained(model)


def test_a_wrong_tokenizer_of_the_same_size_is_named(trained, tokenizer, tmp_path):
    rng = random.Random(5)  # text of other words: random letter strings
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(400)]
    other_text = [" ".join(rng.choice(words) for _ in range(10)) for _ in range(2000)]
    path = tmp_path / "other.model"
    path.write_bytes(train_tokenizer(other_text, tokenizer.n_words))
    other = Tokenizer(path)
    assert other.n_words == tokenizer.n_words
    result = check_base_model(trained, other, probe())
    assert not result.ok and result.cause == "tokenizer", result.report()
    assert "wrong tokenizer" in result.report() and "per character" in result.report()
    # Known pieces that differ name the tokenizer too (the released presets know LLaMA's).
    pieces = {i: tokenizer.sp.IdToPiece(i) for i in range(300, 310)}
    result = check_base_model(trained, other, probe(pieces=pieces, max_tokens_per_char=None))
    assert result.cause == "tokenizer" and "pieces differ" in result.report()


def test_a_vocabulary_mismatch_is_named_without_running_the_model(trained, golden):
    words = Tokenizer(golden / "llama_adapter" / "llama" / "tokenizer.model")  # 1000 pieces, the model has 500
    result = check_base_model(trained, words, probe())
    assert not result.ok and result.cause == "vocabulary" and result.perplexity is None
    assert "1000 pieces but the model's embedding has 500 rows" in result.report()


def test_special_ids_that_differ_fail_even_when_the_text_is_modelled(trained, tokenizer):
    result = check_base_model(trained, tokenizer, probe(eos_id=7))
    assert not result.ok and result.cause == "tokenizer"
    assert "EOS id is 2" in result.report()


def test_llama2_norm_eps_is_a_named_warning(trained, tokenizer):
    llama2 = Llama(config_for(tokenizer, norm_eps=1e-5), AdapterConfig(bias_lora=False, query_layer=1,
                                                                         imagebind_dim=8))
    llama2.load_state_dict(trained.state_dict())
    result = check_base_model(llama2.eval(), tokenizer, probe())
    assert result.ok and result.cause == "llama2", result.report()
    assert "LLaMA-2" in result.warnings[0] and "norm_eps is 1e-05" in result.warnings[0]
    strict = check_base_model(llama2.eval(), tokenizer, probe(severity={"llama2": "error"}))
    assert not strict.ok and strict.cause == "llama2"


def test_an_english_only_model_on_the_chinese_probe_is_named_plain_llama(trained, tokenizer):
    """Chinese sentences the model never saw, as translations of English ones it models well:
    what plain LLaMA-7B does with the 7B_chinese probe."""
    unseen = probe(translations=sanity.CHINESE_SENTENCES[:4])
    result = check_base_model(trained, tokenizer, unseen)
    assert result.ok and result.cause == "plain_llama", result.report()
    assert result.chinese_ratio > 1.6
    assert "plain LLaMA-7B" in result.warnings[0] and "python -m imagebind_llm.merge" in result.warnings[0]


def test_a_quantised_model_is_checked_like_the_full_one(trained, tokenizer):
    quantize = pytest.importorskip("imagebind_llm.quantize")
    model = copy.deepcopy(trained)
    quantize.quantize_llama_(model, "int8")  # the output head too: its rows are then not read
    result = check_base_model(model, tokenizer, probe())
    assert result.ok, result.report()
    assert result.perplexity < 6


def test_probes_of_the_presets():
    chinese = sanity.probe_for_preset("imagebind-llm-7b")
    assert chinese.translations and len(chinese.translations) == len(chinese.texts)
    assert all(any("\u4e00" <= c <= "\u9fff" for c in text) for text in chinese.translations)
    assert chinese.max_perplexity == 300 and chinese.max_chinese_ratio == 1.6 and chinese.norm_eps == 1e-6
    assert chinese.pieces[1] == "<s>" and "python -m imagebind_llm.merge" in chinese.hint
    beta = sanity.probe_for_preset("imagebind-llm-7b-beta")
    assert beta.translations == () and beta.max_perplexity == 300
    assert all(text.isascii() for text in chinese.texts + beta.texts)
    toy = sanity.probe_for_preset("toyworld")
    assert toy.max_perplexity == 30 and len(toy.texts) >= 5
    assert sanity.probe_for_preset("tiny-untrained") is None and sanity.probe_for_preset(None) is None


# ---------------------------------------------------------------------------------------------
# The Pipeline, the command line and the app
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def untrained():
    from imagebind_llm.presets import build_untrained_pipeline

    return build_untrained_pipeline()


def test_the_pipeline_checks_once_before_the_first_answer(untrained, monkeypatch):
    from imagebind_llm.generation import GenerationConfig
    from imagebind_llm.pipeline import Settings

    settings = Settings(generation=GenerationConfig(max_new_tokens=2))
    assert untrained.base_check is None and untrained.check_base_model() is None
    assert isinstance(untrained.answer([], "Hi?", settings), str)  # no probe: no check

    calls = []
    real = sanity.check_base_model
    monkeypatch.setattr(sanity, "check_base_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    sanity.attach_probe(untrained, "toyworld")  # random weights against a probe: refused
    for _ in range(2):
        with pytest.raises(BaseModelError, match="random"):
            untrained.answer([], "Hi?", settings)
    assert len(calls) == 1  # checked once, the failure kept
    assert untrained.base_check_result.cause == "random_weights"

    from imagebind_llm.pipeline import Chat, Pipeline

    fresh = Pipeline(untrained.imagebind, untrained.model, untrained.tokenizer, name="x")
    fresh.base_check = probe(max_perplexity=1e12, norm_eps=1e-5, translations=(), max_tokens_per_char=None,
                             ascii_text=False)
    chat = Chat()
    "".join(fresh.chat(chat, "Hi?", settings=settings))
    "".join(fresh.chat(chat, "And?", settings=settings))
    assert len(chat.notices) == 1 and "LLaMA-2" in chat.notices[0]  # the warning, once per chat


def test_random_weights_are_named_before_a_wrong_tokenizer(untrained):
    """Both wrong at once (random weights, and a probe whose tokenizer limit the untrained
    tokenizer misses): random weights come first, as no tokenizer could make them work; the
    tokenizer is still reported."""
    import dataclasses

    strict = dataclasses.replace(sanity.probe_for_preset("toyworld"), max_tokens_per_char=0.01)
    result = sanity.check_base_model(untrained.model, untrained.tokenizer, strict)
    assert [f.cause for f in result.errors] == ["random_weights", "tokenizer"]
    assert result.cause == "random_weights"
    with pytest.raises(BaseModelError, match="likely cause \\[random_weights\\].*\n  also \\[tokenizer\\]"):
        result.raise_if_failed()


def test_skip_base_check_flag_reaches_the_preset_loader(monkeypatch):
    from imagebind_llm import cli, presets

    seen = {}

    def fake(name, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(presets, "load_preset_pipeline", fake)
    for argv, expected in ((["chat", "--preset", "toyworld", "Hi?"], True),
                           (["chat", "--preset", "toyworld", "--skip-base-check", "Hi?"], False)):
        with pytest.raises(SystemExit):
            cli.main(argv)
        assert seen["base_check"] is expected


def test_the_app_reads_skip_base_check_from_its_variable():
    from imagebind_llm.app.server import parse_args

    assert parse_args([], environ={}).skip_base_check is False
    assert parse_args([], environ={"IMAGEBIND_LLM_SKIP_BASE_CHECK": "1"}).skip_base_check is True
    assert parse_args(["--skip-base-check"], environ={}).skip_base_check is True


def test_the_shipped_toyworld_model_passes_and_fails_when_shuffled():
    from imagebind_llm.presets import MANIFEST, TOYWORLD_DIR, build_toyworld_pipeline, toyworld_available

    if not toyworld_available():
        pytest.skip(f"the toy-world model is not installed: {TOYWORLD_DIR / MANIFEST} is missing (build and "
                    "install it with python -m train.toyworld --install)")
    pipeline = build_toyworld_pipeline()
    toy = sanity.toyworld_probe()
    result = check_base_model(pipeline.model, pipeline.tokenizer, toy)
    assert result.ok, result.report()
    llama = pipeline.model.llama
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(llama.tok_embeddings.weight.shape[0], generator=generator)
    with torch.no_grad():
        llama.tok_embeddings.weight.copy_(llama.tok_embeddings.weight[order])
        llama.output.weight.copy_(llama.output.weight[order])
    shuffled = check_base_model(pipeline.model, pipeline.tokenizer, toy)
    assert not shuffled.ok and shuffled.cause == "shuffled_weights", shuffled.report()
