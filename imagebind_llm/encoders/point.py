"""Point-Bind's Point-BERT encoder (reference.md 3), in plain torch.

points (B, N, 3) -> farthest point sampling of ``num_groups`` centres -> the ``group_size``
nearest points of each centre, relative to it -> a mini-PointNet per group -> transformer
(position MLP of the centres re-added before every block) -> [cls, max over groups] ->
projection to ``projection_dim``. The point head and postprocessor live in ``imagebind.py``.

Farthest point sampling is deterministic here: it starts at index 0 of every cloud (the
official code draws the start at random, so its point embeddings vary from run to run by
about 2e-3); ``start_indices`` reproduces any official draw.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PointConfig
from .transformer import Block, drop_path_rates


def farthest_point_sample(points: torch.Tensor, count: int,
                          start_indices: torch.Tensor | None = None) -> torch.Tensor:
    """Indices (B, count) of farthest point sampling on (B, N, 3), starting at
    ``start_indices`` (B,) or at 0. Squared Euclidean distances, ties to the lowest index."""
    batch, num_points, _ = points.shape
    if count > num_points:
        raise ValueError(f"cannot sample {count} centres from {num_points} points")
    rows = torch.arange(batch, device=points.device)
    chosen = torch.empty(batch, count, dtype=torch.long, device=points.device)
    nearest = torch.full((batch, num_points), 1e10, dtype=points.dtype, device=points.device)
    current = (torch.zeros(batch, dtype=torch.long, device=points.device) if start_indices is None
               else start_indices.to(points.device, torch.long))
    for i in range(count):
        chosen[:, i] = current
        centre = points[rows, current].unsqueeze(1)  # (B, 1, 3)
        nearest = torch.minimum(nearest, ((points - centre) ** 2).sum(-1))
        current = nearest.argmax(-1)
    return chosen


def knn_indices(points: torch.Tensor, centres: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, G, k) of the k nearest points of each centre (the centre itself included).
    Uses the official expansion -2ab + |a|^2 + |b|^2; the order within a group is irrelevant
    because the encoder max-pools over it."""
    dist = (-2 * centres @ points.transpose(1, 2)
            + (centres ** 2).sum(-1, keepdim=True) + (points ** 2).sum(-1).unsqueeze(1))
    return dist.topk(k, dim=-1, largest=False, sorted=False).indices


class GroupEncoder(nn.Module):
    """Mini-PointNet over each group of points: (B, G, K, 3) -> (B, G, feature_dim).

    The layers are the official 1x1 Conv1d / BatchNorm1d stacks (their parameter names are the
    checkpoint's), applied to channel-last points as matrix products: the same function, and
    on a CPU half the time of Conv1d over thousands of 32-point groups."""

    def __init__(self, config: PointConfig):
        super().__init__()
        w1, w2, w3 = config.group_mlp_widths
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, w1, 1), nn.BatchNorm1d(w1), nn.ReLU(inplace=True), nn.Conv1d(w1, w2, 1))
        self.second_conv = nn.Sequential(
            nn.Conv1d(w3, w3, 1), nn.BatchNorm1d(w3), nn.ReLU(inplace=True),
            nn.Conv1d(w3, config.group_feature_dim, 1))

    @staticmethod
    def _pointwise(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """conv -> batch norm -> ReLU -> conv, on (..., channels): batch norm over all points
        of all groups per channel, as BatchNorm1d does on (groups, channels, points)."""
        first, norm, _, second = layers
        x = F.linear(x, first.weight.squeeze(-1), first.bias)
        x = F.relu(norm(x.reshape(-1, x.shape[-1])).reshape(x.shape))
        return F.linear(x, second.weight.squeeze(-1), second.bias)

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        batch, num_groups, size, _ = groups.shape
        x = self._pointwise(self.first_conv, groups.reshape(batch * num_groups, size, 3))  # (BG, K, w2)
        pooled = x.amax(dim=1, keepdim=True)
        x = torch.cat([pooled.expand(-1, size, -1), x], dim=2)  # [global, local]
        x = self._pointwise(self.second_conv, x).amax(dim=1)
        return x.reshape(batch, num_groups, -1)


class PointEncoder(nn.Module):
    def __init__(self, config: PointConfig):
        super().__init__()
        self.config = config
        width = config.width
        self.group_encoder = GroupEncoder(config)
        self.reduce_dim = nn.Linear(config.group_feature_dim, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, width))
        self.pos_embed = nn.Sequential(nn.Linear(3, config.pos_hidden), nn.GELU(),
                                       nn.Linear(config.pos_hidden, width))
        trunk = config.trunk
        self.blocks = nn.ModuleList(Block(trunk, rate) for rate in drop_path_rates(trunk))
        self.norm = nn.LayerNorm(width, eps=config.norm_eps)
        self.projection = nn.Parameter(torch.randn(2 * width, config.projection_dim) * config.projection_dim**-0.5)

    def group(self, points: torch.Tensor, start_indices: torch.Tensor | None = None):
        """Centres (B, G, 3) and centre-relative neighbourhoods (B, G, K, 3), in float32."""
        c = self.config
        points = points.float()
        if points.ndim != 3 or points.shape[-1] != 3:
            raise ValueError(f"point input must be (B, N, 3), got {tuple(points.shape)}")
        if points.shape[1] < max(c.num_groups, c.group_size):
            raise ValueError(f"point clouds need at least {max(c.num_groups, c.group_size)} points, "
                             f"got {points.shape[1]}")
        rows = torch.arange(points.shape[0], device=points.device)[:, None]
        centres = points[rows, farthest_point_sample(points, c.num_groups, start_indices)]
        neighbours = knn_indices(points, centres, c.group_size)  # (B, G, K)
        groups = points[rows[:, :, None], neighbours] - centres.unsqueeze(2)
        return centres, groups

    def forward(self, points: torch.Tensor, start_indices: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, 3) -> (B, projection_dim)."""
        return self.encode_groups(*self.group(points, start_indices))

    def encode_groups(self, centres: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """The learned part, from :meth:`group`'s output (which has no parameters, so training
        can compute it once per cloud)."""
        dtype = self.projection.dtype
        tokens = self.reduce_dim(self.group_encoder(groups.to(dtype)))
        batch = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(batch, -1, -1), self.pos_embed(centres.to(dtype))], dim=1)
        for block in self.blocks:
            x = block(x + pos)  # Point-BERT adds the position embedding before every block
        x = self.norm(x)
        features = torch.cat([x[:, 0], x[:, 1:].amax(dim=1)], dim=-1)
        return features @ self.projection

