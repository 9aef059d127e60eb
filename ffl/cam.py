"""Class activation maps (Zhou et al., "Learning Deep Features for Discriminative Localization",
CVPR 2016) of every classifier, and the picture that sets them side by side: where each
sub-network and the fused classifier see the evidence for an image's class.

Every classifier here is global average pooling and one linear layer over a feature map, so its
logit for class c is the spatial mean of ``sum_k W[c, k] * F[k]``: that map, before the mean, is
exactly where the logit comes from (no gradients, no approximation).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ffl.methods import Method

# A perceptually ordered colormap (dark blue -> teal -> yellow), five stops of matplotlib's
# viridis interpolated linearly: Pillow has no colormaps, and one table does not need matplotlib.
_STOPS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)


@torch.no_grad()
def class_activation_maps(method: Method, images: torch.Tensor, classes: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{classifier: (N, h, w)}``: each image's map for its class in ``classes`` (normalised
    images in, eval mode); the maps' spatial means are the classifiers' logits minus the bias."""
    out = {}
    for name, (fmap, fc) in method.classifier_features(images).items():
        weights = fc.weight[classes].to(fmap.dtype)  # (N, C)
        out[name] = torch.einsum("nc,nchw->nhw", weights, fmap).float()
    return out


def colorize(maps: np.ndarray) -> np.ndarray:
    """(N, h, w) in [0, 1] -> (N, h, w, 3) uint8."""
    x = np.clip(maps, 0, 1) * (len(_STOPS) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_STOPS) - 2)
    t = (x - lo)[..., None]
    return ((1 - t) * _STOPS[lo] + t * _STOPS[lo + 1]).astype(np.uint8)


def cam_picture(
    images: torch.Tensor,
    maps: dict[str, torch.Tensor],
    labels: Sequence[str],
    scale: int = 4,
    alpha: float = 0.6,
):
    """A PIL image: one row per image (its label on the left), the image and then each classifier's
    map over it in grey, each map scaled to its own [0, 1] (where, not how strongly)."""
    from PIL import Image, ImageDraw

    n, _, h, w = images.shape
    size = (w * scale, h * scale)
    pictures = (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).astype(np.uint8)
    # The maps go over the image in grey: on a coloured image a colour map is hard to read.
    gray = pictures.mean(axis=-1, keepdims=True).repeat(3, axis=-1)
    names = list(maps)
    label_w, head_h = 80, 16
    canvas = Image.new("RGB", (label_w + size[0] * (1 + len(names)), head_h + size[1] * n), "white")
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(["image", *names]):
        draw.text((label_w + j * size[0] + 4, 2), title, fill="black")
    for name_j, name in enumerate(names):
        m = maps[name]
        lo = m.amin(dim=(1, 2), keepdim=True)
        hi = m.amax(dim=(1, 2), keepdim=True)
        unit = ((m - lo) / (hi - lo).clamp_min(1e-12)).unsqueeze(1)
        unit = torch.nn.functional.interpolate(unit, size=(h, w), mode="bilinear", align_corners=False)
        heat = colorize(unit[:, 0].cpu().numpy())
        overlay = ((1 - alpha) * gray + alpha * heat).astype(np.uint8)
        for i in range(n):
            tile = Image.fromarray(overlay[i]).resize(size, Image.NEAREST)
            canvas.paste(tile, (label_w + (1 + name_j) * size[0], head_h + i * size[1]))
    for i in range(n):
        canvas.paste(Image.fromarray(pictures[i]).resize(size, Image.NEAREST), (label_w, head_h + i * size[1]))
        draw.text((4, head_h + i * size[1] + size[1] // 2 - 6), str(labels[i])[:12], fill="black")
    return canvas


def pick_examples(targets: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of up to ``count`` images, one per class first (in class order), then the rest in order."""
    first: dict[int, int] = {}
    for i, t in enumerate(targets.tolist()):
        first.setdefault(t, i)
    chosen = [first[c] for c in sorted(first)][:count]
    rest = [i for i in range(len(targets)) if i not in set(chosen)]
    return torch.tensor((chosen + rest)[:count], dtype=torch.long)
