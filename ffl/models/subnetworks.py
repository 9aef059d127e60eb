"""N sub-networks over one input: branches sharing low-level layers, or independent networks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ffl.models.registry import backbone_spec


class Classifier(nn.Module):
    """Global average pool -> linear: the head of every classifier in this project."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x):
        # Logits become softened KD targets: under bf16 autocast the linear layer would round them
        # to 8 mantissa bits. The head is a vanishing share of the work, so it always runs in fp32.
        x = torch.flatten(self.pool(x), 1)
        with torch.autocast(x.device.type, enabled=False):
            return self.fc(x.float())


def check_fusable(archs: Sequence[str]) -> None:
    """Feature maps can be concatenated only if their spatial sizes agree."""
    specs = [backbone_spec(a) for a in archs]
    sizes = {(s.input_size // s.stride) for s in specs}
    if len(sizes) > 1:
        detail = ", ".join(f"{s.name}: {s.input_size // s.stride}x{s.input_size // s.stride}" for s in specs)
        raise ValueError(f"feature maps of different spatial sizes cannot be fused ({detail})")


class SubNetworks(nn.Module):
    """``forward(x) -> (feature_maps, logits)``, one of each per sub-network.

    ``shared=True`` builds ONE/FFL-style branches: the low-level layers of the first backbone are
    shared, each branch owns its high-level layers and classifier (all archs must then be equal).
    ``shared=False`` builds independent networks, which may differ in architecture (DML setting).
    """

    def __init__(self, archs: Sequence[str], num_classes: int, shared: bool):
        super().__init__()
        if len(archs) < 1:
            raise ValueError("at least one sub-network is needed")
        if shared and len(set(archs)) > 1:
            raise ValueError(f"branches sharing low-level layers must have one architecture, got {list(archs)}")
        self.archs = list(archs)
        self.shared = shared
        backbones = [backbone_spec(a).build() for a in archs]
        if shared:
            self.trunk = backbones[0].low
            self.branches = nn.ModuleList(b.high for b in backbones)
        else:
            self.trunk = nn.Identity()
            self.branches = nn.ModuleList(nn.Sequential(b.low, b.high) for b in backbones)
        self.heads = nn.ModuleList(Classifier(b.out_channels, num_classes) for b in backbones)
        self.out_channels = [b.out_channels for b in backbones]
        self.low_channels = backbones[0].low_channels
        # Experimental: run each branch on its own CUDA stream. Small branches leave most of a
        # large GPU idle, kernel after kernel; side by side they overlap (forward and, because
        # autograd replays each op on its forward stream, backward). Measured by ffl bench.
        self.concurrent_branches = False
        self._streams: list[torch.cuda.Stream] = []

    def __len__(self) -> int:
        return len(self.branches)

    def forward_trunk(self, x):
        return self.trunk(x)

    def forward_branches(self, shared):
        # torch.compile cannot trace stream switches (torch 2.11: no fake impl for its stream ops).
        concurrent = self.concurrent_branches and not torch.compiler.is_compiling()
        if concurrent and shared.is_cuda and len(self.branches) > 1:
            return self._forward_concurrent(shared)
        feats = [branch(shared) for branch in self.branches]
        return feats, [head(f) for head, f in zip(self.heads, feats)]

    def _forward_concurrent(self, shared):
        main = torch.cuda.current_stream(shared.device)
        if len(self._streams) != len(self.branches):
            self._streams = [torch.cuda.Stream(shared.device) for _ in self.branches]
        feats, logits = [], []
        for stream, branch, head in zip(self._streams, self.branches, self.heads):
            # Fork: the branch starts after the trunk; the next step's branch after this step's
            # uses on the main stream, which keeps the allocator's stream-ordered reuse safe.
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                feats.append(branch(shared))
                logits.append(head(feats[-1]))
        for stream in self._streams:
            main.wait_stream(stream)  # join
        return feats, logits

    def subnetwork(self, i: int) -> nn.Module:
        """Sub-network ``i`` as a module of its own (its shared layers, branch and head)."""
        return nn.Sequential(self.trunk, self.branches[i], self.heads[i])

    def forward_one(self, i: int, x):
        """Sub-network ``i`` alone (shared layers included): its logits."""
        return self.heads[i](self.branches[i](self.trunk(x)))

    def forward(self, x):
        return self.forward_branches(self.forward_trunk(x))
