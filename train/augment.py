"""Label-preserving augmentation of image, video, depth and thermal batches (the toy world's
vision encoder, and the depth and thermal encoders bound to it).

The toy vision encoder cuts a 224-pixel image into 32-pixel patches, so an object looks
different to it depending on where it falls on the patch grid. With a few thousand images it
learns the training images by heart instead (a supervised probe: 90 % right on them, 69-76 %
on new ones). Mirroring and shifts by up to half a patch show it every object at many grid
offsets: with them the held-out probe reached 85-88 % on shape, count and motion. The depth
and thermal encoders, bound to the images of only 600 scenes, gain the same way (depth count
QA 60-62 % without, 70-80 % with).

Every attribute of the toy world (shape, colour, count, motion) survives both: no caption
says left or right.
"""

from __future__ import annotations

import torch


def mirror_and_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """A new batch: each item of ``x`` (B, C, H, W) or (B, C, T, H, W), all frames alike, is
    mirrored left-right with probability 1/2 and moved by up to ``max_shift`` pixels each way.
    The strip a shift uncovers keeps the item's own pixels there (the scene's background)."""
    out = x.clone()
    flip = torch.rand(len(x), generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    if max_shift <= 0:
        return out
    shifts = torch.randint(-max_shift, max_shift + 1, (len(x), 2), generator=generator).tolist()
    for i, (dy, dx) in enumerate(shifts):
        item = out[i]
        moved = torch.roll(item, (dy, dx), (-2, -1))
        # undo the wrap-around: the rows and columns that came round from the far edge
        if dy > 0:
            moved[..., :dy, :] = item[..., :dy, :]
        elif dy < 0:
            moved[..., dy:, :] = item[..., dy:, :]
        if dx > 0:
            moved[..., :, :dx] = item[..., :, :dx]
        elif dx < 0:
            moved[..., :, dx:] = item[..., :, dx:]
        out[i] = moved
    return out
