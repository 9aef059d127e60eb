"""The embedded default dataset: "shapes", generated deterministically from a seed, no network.

Ten classes of shapes (disk, square, triangle, ring, plus, diamond, striped square, crescent,
frame, two dots) drawn anti-aliased at a random position, scale, small rotation and colour on a
random smooth background, with pixel noise and a distracting blob. Colour and position carry no
label information, so a network has to learn shape. 32x32 RGB like CIFAR, so every CIFAR model
and augmentation applies unchanged.
"""

from __future__ import annotations

import numpy as np

from ffl.data.arrays import ArrayDataset, Split, channel_stats
from ffl.data.dataset import stratified_split

CLASSES = ["disk", "square", "triangle", "ring", "plus", "diamond", "stripes", "crescent", "frame", "two_dots"]
SIZE = 32
_SS = 2  # supersampling factor for anti-aliased edges


def _shape_mask(cls: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-masks of shape ``cls[i]`` in normalised coordinates (u, v) of image i."""
    rho = np.sqrt(u * u + v * v)
    au, av = np.abs(u), np.abs(v)
    masks = [
        rho <= 1.0,
        np.maximum(au, av) <= 0.8,
        (v >= -0.55) & (np.sqrt(3.0) * au - v <= 0.9),
        (rho >= 0.55) & (rho <= 1.0),
        ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0)),
        au + av <= 1.0,
        (np.maximum(au, av) <= 0.85) & (np.sin(v * np.pi * 2.4) > 0),
        (rho <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.55),
        (np.maximum(au, av) <= 0.9) & (np.maximum(au, av) >= 0.55),
        ((u - 0.5) ** 2 + v * v <= 0.16) | ((u + 0.5) ** 2 + v * v <= 0.16),
    ]
    out = np.zeros(u.shape, dtype=bool)
    for c, m in enumerate(masks):
        out |= (cls == c) & m
    return out


def _render(labels: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    n = len(labels)
    res = SIZE * _SS
    grid = (np.arange(res) + 0.5) / _SS  # pixel coordinates in [0, 32)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    yy, xx = yy[None], xx[None]

    def per_image(a):
        return a[:, None, None]

    # Background: a colour gradient plus low-frequency waves.
    c0, c1 = rng.uniform(0, 1, (n, 3)), rng.uniform(0, 1, (n, 3))
    theta = rng.uniform(0, 2 * np.pi, n)
    t = (np.cos(per_image(theta)) * xx + np.sin(per_image(theta)) * yy) / SIZE
    t = (t - t.min(axis=(1, 2), keepdims=True)) / (np.ptp(t, axis=(1, 2), keepdims=True) + 1e-9)
    freq, phase = rng.uniform(0.1, 0.35, (n, 2)), rng.uniform(0, 2 * np.pi, (n, 2))
    waves = (
        0.12
        * np.sin(per_image(freq[:, 0]) * xx + per_image(phase[:, 0]))
        * np.sin(per_image(freq[:, 1]) * yy + per_image(phase[:, 1]))
    )
    img = c0[:, :, None, None] * (1 - t[:, None]) + c1[:, :, None, None] * t[:, None] + waves[:, None]

    def paint(img, cls, cx, cy, scale, angle, colour):
        dx, dy = xx - per_image(cx), yy - per_image(cy)
        ca, sa = np.cos(per_image(angle)), np.sin(per_image(angle))
        u, v = (ca * dx + sa * dy) / per_image(scale), (-sa * dx + ca * dy) / per_image(scale)
        m = _shape_mask(per_image(cls), u, v)[:, None]
        return np.where(m, colour[:, :, None, None], img)

    # A distractor (a shape of a random class, small) first, so the labelled shape is on top.
    img = paint(
        img,
        rng.integers(0, len(CLASSES), n),
        rng.uniform(2, 30, n),
        rng.uniform(2, 30, n),
        rng.uniform(2.5, 4.5, n),
        rng.uniform(-np.pi, np.pi, n),
        rng.uniform(0, 1, (n, 3)),
    )
    bg = img.mean(axis=(2, 3))
    fg = rng.uniform(0, 1, (n, 3))
    low_contrast = np.linalg.norm(fg - bg, axis=1) < 0.35
    fg[low_contrast] = 1.0 - fg[low_contrast]
    scale = rng.uniform(5.0, 9.0, n)
    margin = scale * 0.8
    cx, cy = rng.uniform(margin, SIZE - margin), rng.uniform(margin, SIZE - margin)
    img = paint(img, labels, cx, cy, scale, rng.uniform(-0.45, 0.45, n), fg)
    img = img.reshape(n, 3, SIZE, _SS, SIZE, _SS).mean(axis=(3, 5))
    img = img + rng.normal(0, noise, img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def make_shapes(
    train_per_class: int = 400,
    test_per_class: int = 200,
    val_fraction: float = 0.1,
    noise: float = 0.1,
    seed: int = 0,
    chunk: int = 1000,
) -> ArrayDataset:
    """Generates the dataset; the same arguments give the same bytes on every machine."""
    rng = np.random.default_rng(seed)
    k = len(CLASSES)

    def generate(per_class):
        labels = rng.permutation(np.repeat(np.arange(k), per_class))
        parts = [_render(labels[i : i + chunk], rng, noise) for i in range(0, len(labels), chunk)]
        return np.concatenate(parts), labels.astype(np.int64)

    train_x, train_y = generate(train_per_class)
    test_x, test_y = generate(test_per_class)
    keep, held = stratified_split(train_y, val_fraction, seed)
    splits = {
        "train": Split(train_x[keep], train_y[keep]),
        "val": Split(train_x[held], train_y[held]),
        "test": Split(test_x, test_y),
    }
    mean, std = channel_stats(splits["train"].images)
    return ArrayDataset("shapes", list(CLASSES), mean, std, splits)
