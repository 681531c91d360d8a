"""train/align.py: the contrastive alignment loop that trains the toy world's ImageBind."""

from __future__ import annotations

import torch
from torch import nn

from train.align import AlignConfig, PromptContrast, Task, align
from train.optim import adamw
from train.toyworld import RandomClip


def test_prompt_contrast_rewards_the_prompt_that_describes_each_item():
    """Two groups of three prompts; an item whose embedding is the sum of its two right prompts
    scores a low loss with its own labels and a high one with anyone else's."""
    torch.manual_seed(0)
    table = nn.Embedding(6, 16)
    labels = torch.tensor([[0, 2], [1, 0], [2, 1], [0, 0]])
    contrast = PromptContrast(torch.arange(6), table, labels, group_size=3)
    with torch.no_grad():
        rows = [table.weight[g * 3 + labels[i, g]] for i in range(4) for g in range(2)]
        items = torch.stack(rows).view(4, 2, 16).sum(1)
        right = contrast.loss(torch.arange(4), items)
        wrong = contrast.loss(torch.tensor([1, 2, 3, 0]), items)  # each item scored against another's labels
    assert right < 0.5 * wrong
    assert contrast.loss(torch.tensor([2]), items[2:3]) < contrast.loss(torch.tensor([2]), items[0:1])


def test_prompt_contrast_checks_that_the_prompts_fill_the_groups():
    try:
        PromptContrast(torch.arange(5), nn.Embedding(6, 4), torch.zeros(3, 2, dtype=torch.long), group_size=3)
    except ValueError as error:
        assert "5 prompts for 2 groups of 3" in str(error)
    else:
        raise AssertionError("5 prompts cannot make 2 groups of 3")


def test_align_trains_prompts_and_runs_a_task_every_few_steps():
    torch.manual_seed(0)
    encoder, text = nn.Linear(4, 8), nn.Embedding(6, 8)
    calls = {"main": 0, "side": 0}

    def counted(name, module):
        def encode(x):
            calls[name] += 1
            return module(x)
        return encode

    inputs = torch.randn(40, 4)
    labels = torch.randint(3, (40, 2))
    prompts = PromptContrast(torch.arange(6), text, labels, group_size=3)
    main = Task("main", counted("main", encoder), inputs, torch.randn(40, 8), None,
                list(encoder.parameters()) + list(text.parameters()), batch_size=8, prompts=prompts)
    side = Task("side", counted("side", encoder), inputs, torch.randn(40, 8), None, list(encoder.parameters()),
                batch_size=8, every=3)
    before = text.weight.detach().clone()
    history = align([main, side], AlignConfig(steps=10, log_every=4), progress=False)
    assert calls == {"main": 10, "side": 4}  # steps 0, 3, 6, 9
    assert not torch.equal(before, text.weight)  # only the prompt loss reaches the prompt encoder
    assert prompts.logit_scale.grad is not None
    assert [r["step"] for r in history] == [0, 4, 8, 9]
    assert all({"main", "main prompts", "side"} <= set(r) for r in history)  # the side task's last loss is kept


def test_random_clip_gathers_one_clip_of_each_video():
    videos = torch.arange(6 * 5).view(6, 5, 1, 1, 1, 1).expand(6, 5, 3, 2, 4, 4).clone()
    view = RandomClip(videos, torch.Generator().manual_seed(0))
    assert len(view) == 6
    index = torch.tensor([4, 1, 4, 0] * 8)
    batch = view[index]
    assert batch.shape == (32, 3, 2, 4, 4)
    clips = batch[:, 0, 0, 0, 0]
    assert torch.equal(clips // 5, index)  # each row is a clip of its own video
    assert len(set((clips % 5).tolist())) > 1  # and the clip is drawn, not always the first


def test_adamw_is_fused_on_the_cpu_and_steps_like_the_unfused_one():
    torch.manual_seed(0)
    weights = [torch.randn(8, 4), torch.randn(4)]
    grads = [torch.randn_like(w) for w in weights]

    def three_steps(make):
        params = [nn.Parameter(w.clone()) for w in weights]
        groups = [{"params": params[:1], "weight_decay": 0.1}, {"params": params[1:], "weight_decay": 0.0}]
        optimizer = make(groups, lr=1e-2, betas=(0.9, 0.98))
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
        return optimizer, [p.detach() for p in params]

    fused, fused_params = three_steps(adamw)
    plain, plain_params = three_steps(torch.optim.AdamW)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    for a, b in zip(fused_params, plain_params):
        assert torch.allclose(a, b, atol=1e-6)
    meta = adamw([nn.Parameter(torch.empty(3, device="meta"))], lr=1e-3)  # a device without the fused kernel
    assert not meta.defaults["fused"]


def test_align_under_bfloat16_autocast_encodes_in_bfloat16_and_learns_like_float32():
    def run(autocast):
        torch.manual_seed(0)
        encoder = nn.Linear(16, 8)
        dtypes = set()

        def encode(x):
            out = encoder(x)
            dtypes.add(out.dtype)
            return out

        inputs = torch.randn(64, 16)
        targets = inputs[:, :8] + 0.1 * torch.randn(64, 8)  # a pairing the encoder can learn
        task = Task("t", encode, inputs, targets, None, list(encoder.parameters()), batch_size=16)
        history = align([task], AlignConfig(steps=60, lr=1e-2, log_every=59, autocast=autocast), progress=False)
        return dtypes, encoder.weight.dtype, [r["t"] for r in history]

    dtypes, weights, losses = run(torch.bfloat16)
    assert dtypes == {torch.bfloat16} and weights == torch.float32  # autocast: float32 weights
    reference_dtypes, _, reference = run(None)
    assert reference_dtypes == {torch.float32}
    assert losses[-1] < 0.5 * losses[0]
    assert abs(losses[-1] - reference[-1]) < 0.1 * reference[0]
