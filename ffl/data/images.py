"""An image file as 8-bit RGB, read only when its decoded size is within bounds.

A file's header declares its size, and decoding allocates what the header says: a PNG of 1 KB can
declare a strip of a hundred million pixels, and resizing its shorter side to the model's input
makes it larger still. Pillow's own limit (about 89 million pixels, an error only at twice that)
is far above what these models take, so the header is checked here first, for ``ffl predict`` and
for the image-file loader alike."""

from __future__ import annotations

import warnings
from pathlib import Path

# 1024 times the largest input a preset takes (ImageNet's 256 x 256 before its 224 crop): 8192 x
# 8192, a 64-megapixel photograph, 192 MB decoded.
MAX_PIXELS = 1024 * 256 * 256


class ImageTooLarge(ValueError):
    """An image whose decoded (or resized) size is beyond MAX_PIXELS."""


def check_size(width: int, height: int, resize: int) -> None:
    """Refuses an image of ``width`` x ``height`` whose pixels, or the pixels it has once its shorter
    side is resized to ``resize`` (evaluation's first step), are more than MAX_PIXELS."""
    short, long = sorted((max(width, 1), max(height, 1)))
    resized = resize * resize * long / short
    if width * height > MAX_PIXELS or resized > MAX_PIXELS:
        what = f"{width} x {height} pixels" + (
            "" if width * height > MAX_PIXELS else f" ({resized / 1e6:.0f} million once resized to {resize})"
        )
        raise ImageTooLarge(f"{what}, beyond the {MAX_PIXELS / 1e6:.0f} million ffl decodes")


def image_suffixes() -> tuple[str, ...]:
    """The file suffixes of every image format Pillow opens (.jpg, .png, .gif, .webp, .tiff, ...)."""
    from PIL import Image

    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN))


def read_rgb(path: str | Path, resize: int):
    """The image at ``path`` as an 8-bit RGB PIL image, its size checked before it is decoded."""
    from PIL import Image

    with warnings.catch_warnings():
        # Pillow's own warning for a large header comes before the check below, which is stricter.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)  # reads the header only
        except Image.DecompressionBombError:  # twice Pillow's limit: it refuses before we can look
            raise ImageTooLarge(
                f"more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} million pixels, beyond the "
                f"{MAX_PIXELS / 1e6:.0f} million ffl decodes"
            ) from None
    with img:
        check_size(*img.size, resize)
        return to_rgb(img)


def to_rgb(img):
    """8-bit RGB, whatever the file holds: 16- and 32-bit grey levels are scaled down (Pillow's own
    conversion clips them at 255), palettes, alpha and CMYK converted."""
    from PIL import Image

    if img.mode.startswith("I") or img.mode == "F":
        import numpy as np

        levels = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or levels.max() > 255 else 255.0
        img = Image.fromarray((levels / top * 255).clip(0, 255).astype(np.uint8))
    return img.convert("RGB")
