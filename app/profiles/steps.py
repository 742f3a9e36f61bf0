"""Model-specific steps, registered by name and chosen by a model's profile.

The pipeline is generic. What one model family needs beyond its profile's numbers (the bundled model
reads images only in the glyph-grid layout it was trained on) is a step registered here under a name,
as vLLM registers its reasoning parsers, and named by the profile (`image_layout = "glyph-grid"`).
The pipeline asks this registry for the profile's step; it never imports a model's own module.

    @register_image_layout("glyph-grid")
    def glyph_grid_layout(image: Image.Image) -> Image.Image: ...

The bundled model's steps register when `app.profiles` is first imported (app/profiles/__init__.py).
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

# Redraws a checked, oriented and scaled RGB or RGBA image for one model; the result is sent as PNG.
ImageStep = Callable[[Image.Image], Image.Image]

AS_IS = "as-is"  # the default layout: the image as sent (checked, scaled and re-encoded), no step
_IMAGE_LAYOUTS: dict[str, ImageStep] = {}


def register_image_layout(name: str) -> Callable[[ImageStep], ImageStep]:
    """Register the decorated function as the image layout `name`."""

    def register(step: ImageStep) -> ImageStep:
        if name == AS_IS or name in _IMAGE_LAYOUTS:
            raise ValueError(f"the image layout {name!r} is already registered")
        _IMAGE_LAYOUTS[name] = step
        return step

    return register


def image_layouts() -> tuple[str, ...]:
    """Every layout a profile may name."""
    return (AS_IS, *_IMAGE_LAYOUTS)


def image_step(layout: str) -> ImageStep | None:
    """The step that redraws images in `layout`; None for as-is. A profile's layout is checked when
    the profile loads, so an unknown name here is a bug (KeyError)."""
    return None if layout == AS_IS else _IMAGE_LAYOUTS[layout]
