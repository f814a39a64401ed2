"""Reading image files so that a damaged one is an error naming the file, not a bare decoder message."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


class ImageFileError(OSError):
    """An image file exists but could not be decoded (truncated, corrupt or not an image)."""


def load_image(path: str | Path) -> Image.Image:
    """The image at ``path``, fully decoded; a damaged file raises :class:`ImageFileError` naming it.

    Pillow reads only the header on ``open`` and reports a truncated body later, without the file's name.
    """
    try:
        with Image.open(path) as img:
            img.load()
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError) as error:  # Pillow raises SyntaxError for some malformed chunks
        raise ImageFileError(
            f"cannot read image {path}: {error}; the file is truncated, corrupt or not an image "
            "(copy or extract it again, or remove it)"
        ) from error
    return img
