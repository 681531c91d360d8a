"""The prefix cache (imagebind_llm/prefix_cache.py): a chat's next turn reuses the keys and values
of the conversation so far, in every decoder and the batcher, and answers as without it."""

from __future__ import annotations

import contextlib

import pytest
import torch
from test_app_handlers import golden_pipeline

from imagebind_llm.batching import DecodeBatcher
from imagebind_llm.fast_decode import get_decoder
from imagebind_llm.generation import GenerationConfig, generate_tokens
from imagebind_llm.llama import KVCache
from imagebind_llm.pipeline import Chat, Media, Settings
from imagebind_llm.prefix_cache import PrefixCache
from imagebind_llm.prompts import Turn, chat_prompt

GREEDY = Settings(generation=GenerationConfig(max_new_tokens=12, temperature=0.0))
QUESTIONS = ["What is in this picture?", "And what colour is it?", "Why?", "Say it again in other words."]


@pytest.fixture(scope="module")
def pipeline(golden):
    return golden_pipeline(golden)


@pytest.fixture(autouse=True)
def no_prefix_cache(pipeline):
    yield
    pipeline.enable_prefix_cache(0)
    pipeline.disable_batching()
    pipeline.set_decoder(None)


def kv(n_layers=2, heads=2, length=16, head_dim=4, batch=1, fill=None):
    """A cache-shaped pair whose values say where they came from (column index + fill)."""
    shape = (n_layers, batch, heads, length, head_dim)
    base = torch.arange(length, dtype=torch.float32)[None, None, None, :, None].expand(shape).clone()
    if fill is not None:
        base += fill
    return base, -base


# ------------------------------------------------------------------------------ the store itself

def test_restore_copies_the_longest_known_prefix_and_leaves_one_token_to_prefill():
    cache = PrefixCache(1 << 20)
    keys, values = kv(fill=100.0)
    assert cache.store([1, 5, 6, 7, 8], None, keys, values)
    assert cache.store([1, 5, 9], None, *kv(fill=200.0))
    target_k, target_v = torch.zeros(2, 3, 2, 16, 4), torch.zeros(2, 3, 2, 16, 4)
    assert cache.restore([1, 5, 6, 7, 3, 3], None, target_k, target_v, row=1) == 4
    assert torch.equal(target_k[:, 1, :, :4], keys[:, 0, :, :4])
    assert torch.equal(target_v[:, 1, :, :4], values[:, 0, :, :4])
    assert target_k[:, 1, :, 4:].abs().sum() == 0 and target_k[:, [0, 2]].abs().sum() == 0  # nothing else written
    # the whole prompt is known: all but its last token are reused (its logits are still needed)
    assert cache.restore([1, 5, 6, 7], None, target_k, target_v) == 3
    assert cache.restore([1, 5, 9, 4], None, target_k, target_v) == 3
    assert torch.equal(target_k[:, 0, :, :3], kv(fill=200.0)[0][:, 0, :, :3])
    assert cache.restore([2, 5, 6], None, target_k, target_v) == 0  # another first token: nothing in common
    assert cache.stats.lookups == 4 and cache.stats.hits == 3 and cache.stats.reused_tokens == 10


def test_a_finished_request_leaves_its_prompt_and_every_answer_token_but_the_last():
    cache = PrefixCache(1 << 20)
    assert not cache.keep_request([1, 2, 3], [], None, *kv())  # stopped before its first token
    assert len(cache) == 0
    assert cache.keep_request([1, 2, 3], [7, 8, 9], None, *kv())  # 9 was produced, never fed
    assert cache.restore([1, 2, 3, 7, 8, 9, 4], None, *kv()) == 5


def test_entries_are_kept_per_visual_query():
    cache = PrefixCache(1 << 20)
    query = torch.randn(1, 1, 8)
    cache.store([1, 2, 3, 4], query, *kv(fill=1.0))
    target = kv()
    assert cache.restore([1, 2, 3, 4, 5], None, *target) == 0  # text only: another model input
    assert cache.restore([1, 2, 3, 4, 5], query + 1e-6, *target) == 0  # compared exactly
    assert cache.restore([1, 2, 3, 4, 5], query.clone(), *target) == 4
    query.add_(1.0)  # the caller's tensor changing later does not change the entry
    assert cache.restore([1, 2, 3, 4, 5], query, *target) == 0


def test_extended_entries_replace_their_prefixes_and_the_budget_evicts_the_least_recently_used():
    per_token = 2 * 2 * 2 * 4 * 4 + 8  # keys and values (2 layers, 2 heads, head_dim 4, float32) + the id
    cache = PrefixCache(per_token * 10)
    cache.store([1, 2, 3], None, *kv())
    cache.store([1, 2, 3, 4, 5], None, *kv())  # extends the first: it replaces it
    assert len(cache) == 1 and cache.nbytes == 5 * per_token
    assert cache.store([1, 2], None, *kv())  # already held inside a longer entry: nothing added
    assert len(cache) == 1
    cache.store([7, 8, 9], None, *kv())
    cache.restore([1, 2, 3, 4, 5, 6], None, *kv())  # [1..5] is now the most recently used
    cache.store([6, 6, 6], None, *kv())  # 11 tokens > 10: the least recently used ([7, 8, 9]) goes
    assert len(cache) == 2 and cache.stats.evicted == 1
    assert cache.restore([7, 8, 9, 1], None, *kv()) == 0
    assert cache.restore([1, 2, 3, 4, 5, 6], None, *kv()) == 5
    assert not cache.store(list(range(11)), None, *kv())  # larger than the whole budget: not kept
    cache.clear()
    assert len(cache) == 0 and cache.restore([1, 2, 3, 4, 5, 6], None, *kv()) == 0
    with pytest.raises(ValueError):
        PrefixCache(-1)


# ------------------------------------------------------------------------------ the model

def test_a_split_prefill_gives_the_whole_prefills_logits(pipeline):
    """What the decoders rely on: keys and values restored for a prefix, then the rest prefilled
    from there, give the logits of one prefill of the whole prompt."""
    model, tokenizer = pipeline.model, pipeline.tokenizer
    prompt = tokenizer.encode("Below is an instruction. ### Instruction: tell me about the picture ### Response:")
    feature = torch.nn.functional.normalize(torch.randn(1, model.config.adapter.imagebind_dim), dim=-1)
    config = model.config.llama
    with torch.inference_mode():
        query = model.visual_query(feature)
        injections = model.injections(query)
        whole = KVCache(config, 1, len(prompt), model.dtype, model.device)
        expected = model.llama(torch.tensor([prompt]), cache=whole, injections=injections, last_only=True)
        cache = PrefixCache(1 << 30)
        cache.store(prompt[:9], query, whole.keys, whole.values)
        split = KVCache(config, 1, len(prompt), model.dtype, model.device)
        start = cache.restore(prompt, query, split.keys, split.values)
        assert start == 9
        got = model.llama(torch.tensor([prompt[start:]]), start=start, cache=split, injections=injections,
                          last_only=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(split.keys, whole.keys, atol=1e-5, rtol=0)


def chat_answers(pipeline, media=(), questions=QUESTIONS) -> list[str]:
    chat = Chat()
    answers = []
    for index, question in enumerate(questions):
        answers.append("".join(pipeline.chat(chat, question, list(media) if index == 0 else (), GREEDY)))
    return answers


def prompt_lengths(pipeline, questions, answers) -> list[int]:
    """The token count of each turn's prompt."""
    return [len(pipeline.tokenizer.encode(chat_prompt([Turn(q, a) for q, a in zip(questions[:k], answers[:k])]
                                                      + [Turn(questions[k])])))
            for k in range(len(questions))]


@pytest.mark.parametrize("mode", ["eager", "static", "batched"])
def test_a_chat_answers_the_same_with_the_prefix_cache_and_prefills_only_its_new_tokens(pipeline, golden, mode):
    image = Media("image", str(golden / "preprocess" / "files" / "img_640x480.jpg"))
    if mode == "batched":
        pipeline.enable_batching(max_batch=4)
    else:
        pipeline.set_decoder(mode)
    expected = chat_answers(pipeline, [image])
    assert all(expected), expected  # random weights: every answer has words

    cache = pipeline.enable_prefix_cache(64 << 20)
    assert chat_answers(pipeline, [image]) == expected
    stats = cache.stats
    # every turn after the first found at least the whole prompt of the turn before (the earlier
    # answer too, up to where its re-encoded text differs from the generated ids)
    lengths = prompt_lengths(pipeline, QUESTIONS, expected)
    assert stats.lookups == len(QUESTIONS) and stats.hits == len(QUESTIONS) - 1
    assert stats.prompt_tokens == sum(lengths)
    assert stats.reused_tokens >= sum(lengths[:-1])
    # a text-only chat shares nothing with the picture's keys and values but the template's start:
    # none of it, as the injection changes every position
    before = stats.reused_tokens
    assert chat_answers(pipeline, (), QUESTIONS[:1]) == chat_answers(_without_cache(pipeline), (), QUESTIONS[:1])
    assert stats.reused_tokens == before


def _without_cache(pipeline):
    pipeline.enable_prefix_cache(0)
    return pipeline


def test_text_only_requests_share_the_prompt_templates_start(pipeline):
    pipeline.set_decoder("static")
    cache = pipeline.enable_prefix_cache(64 << 20)
    first = "".join(pipeline.stream([], "Tell me a story", GREEDY))
    second = "".join(pipeline.stream([], "Count to ten", GREEDY))
    assert cache.stats.hits == 1 and cache.stats.reused_tokens >= 20  # the official header
    pipeline.enable_prefix_cache(0)
    assert "".join(pipeline.stream([], "Tell me a story", GREEDY)) == first
    assert "".join(pipeline.stream([], "Count to ten", GREEDY)) == second


@contextlib.contextmanager
def record_logits(model):
    """The logits of every call of the model's output layer while inside."""
    calls: list[torch.Tensor] = []
    hook = model.llama.output.register_forward_hook(lambda module, args, out: calls.append(out.float().clone()))
    try:
        yield calls
    finally:
        hook.remove()


class Runner:
    """One request through a decoder ('eager', 'static') or the batcher, with or without a prefix cache."""

    def __init__(self, model, mode: str):
        self.model, self.mode = model, mode
        self.batcher = DecodeBatcher(model, max_batch=2) if mode == "batched" else None

    def run(self, prompt, config, *, eos_id=None, cancel=None, cache=None) -> list[int]:
        if self.batcher is not None:
            self.batcher.prefix_cache = cache
            return list(self.batcher.stream(prompt, None, config, eos_id=eos_id, cancel=cancel))
        if self.mode == "eager":
            steps = generate_tokens(self.model, [prompt], config, eos_id=eos_id, cancel=cancel, prefix_cache=cache)
        else:
            steps = get_decoder(self.model, self.mode).generate_tokens([prompt], config, eos_id=eos_id,
                                                                       cancel=cancel, prefix_cache=cache)
        return [step[0] for step in steps if step[0] is not None]


@pytest.mark.parametrize("mode", ["eager", "static", "batched"])
@pytest.mark.parametrize("ending", ["limit", "eos", "cancel"])
def test_the_next_request_reuses_exactly_the_columns_a_request_wrote(pipeline, mode, ending):
    """However a request ends, what it leaves is its prompt and every answer token it fed; a
    follow-up that continues those exact ids reuses all of them and answers as without a cache
    (with the decoder's buffers overwritten in between, so only the cache can supply them)."""
    model, tokenizer = pipeline.model, pipeline.tokenizer
    prompt = tokenizer.encode("### Instruction:\nCount to ten\n\n### Response:")
    config = GenerationConfig(max_new_tokens=6, temperature=0.0)
    runner = Runner(model, mode)
    try:
        free = runner.run(prompt, config)
        assert len(free) == 6
        eos_id, cancel, read = None, None, []
        if ending == "eos":  # the 4th token plays EOS: the answer is 3 tokens, all of them fed
            eos_id = free[3]
            assert eos_id not in free[:3]
        elif ending == "cancel":
            def cancel():
                return len(read) >= 4
        cache = PrefixCache(64 << 20)
        for token in runner.run(prompt, config, eos_id=eos_id, cancel=cancel, cache=cache):
            read.append(token)
        assert read == free[:len(read)] and len(cache) == 1
        fed = {"limit": 5, "eos": 3, "cancel": len(read) - 1}[ending]
        follow = prompt + read + tokenizer.encode("Go on", bos=False)
        with record_logits(model) as logits:
            alone = runner.run(follow, config)
        first_logits = logits[0]
        runner.run(tokenizer.encode("Something else entirely, to overwrite the buffers"), config)
        before = cache.stats.reused_tokens
        with record_logits(model) as logits:
            assert runner.run(follow, config, cache=cache) == alone
        torch.testing.assert_close(logits[0], first_logits, atol=1e-5, rtol=0)
        reused = cache.stats.reused_tokens - before
        if mode == "batched" and ending == "cancel":  # the batcher may have run a step past the reader
            assert len(prompt) + fed <= reused <= len(prompt) + fed + 1
        else:
            assert reused == len(prompt) + fed
    finally:
        if runner.batcher is not None:
            runner.batcher.close()


def test_merging_lora_forgets_the_cached_keys_and_values(golden):
    pipeline = golden_pipeline(golden, merge_lora=False)  # its own: the merge changes its weights
    cache = pipeline.enable_prefix_cache(1 << 20)
    cache.store([1, 2, 3], None, *kv())
    pipeline.merge_lora()
    assert pipeline.model.llama.lora_merged and len(cache) == 0


def test_follow_ups_admitted_together_each_continue_from_their_own_cached_prefix(pipeline):
    """Requests prefilled in one forward (the batcher's group prefill) restore prefixes of
    different lengths and answer as they do alone, without the cache."""
    import threading

    model, tokenizer = pipeline.model, pipeline.tokenizer
    config = GenerationConfig(max_new_tokens=5, temperature=0.0)
    firsts = [tokenizer.encode(f"### Instruction:\n{q}\n\n### Response:") for q in
              ["Count to ten", "Tell me a story about the sea and a dog", "Why?"]]
    cache = PrefixCache(64 << 20)
    batcher = DecodeBatcher(model, window_ms=100, prefix_cache=cache)
    try:
        answers = [list(batcher.stream(prompt, None, config, eos_id=None)) for prompt in firsts]
        follow_ups = [prompt + answer + tokenizer.encode(extra, bos=False)
                      for prompt, answer, extra in zip(firsts, answers, ["Go on", "And then?", "Say more, please"])]
        expected = [[s[0] for s in generate_tokens(model, [p], config, eos_id=None) if s[0] is not None]
                    for p in follow_ups]
        reused, forwards = cache.stats.reused_tokens, batcher.stats.prefill_forwards
        results: list = [None] * 3
        barrier = threading.Barrier(3)

        def ask(index):
            barrier.wait()
            results[index] = list(batcher.stream(follow_ups[index], None, config, eos_id=None))

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert results == expected
        assert batcher.stats.prefill_forwards == forwards + 1  # the three together
        restored = cache.stats.reused_tokens - reused
        assert restored == sum(len(p) + len(a) - 1 for p, a in zip(firsts, answers))  # each its own prefix
    finally:
        batcher.close()
