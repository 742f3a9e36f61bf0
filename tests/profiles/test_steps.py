"""Model-specific steps: registered by name (app/profiles/steps.py), named by a profile, applied by the
generic pipeline without it knowing the model (app/pipeline/media.py)."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image, ImageOps

from app.pipeline.media import ImageLimits, normalize_image_url
from app.profiles import steps
from app.profiles.profile import ProfileError, parse_profile
from app.profiles.steps import AS_IS, image_layouts, image_step, register_image_layout
from app.profiles.thinkgate_arith import glyph_grid_layout

LIMITS = ImageLimits(max_bytes=1_000_000, max_pixels=1_000_000, max_side=512)


def png_url(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(out.getvalue()).decode()}"


def test_the_bundled_models_layout_is_registered_under_its_profiles_name() -> None:
    assert image_layouts() == (AS_IS, "glyph-grid")
    assert image_step("glyph-grid") is glyph_grid_layout
    assert image_step(AS_IS) is None


def test_a_name_is_registered_once() -> None:
    for taken in (AS_IS, "glyph-grid"):
        with pytest.raises(ValueError, match="already registered"):
            register_image_layout(taken)(lambda image: image)


async def test_a_registered_step_is_chosen_by_the_profiles_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(steps._IMAGE_LAYOUTS, "mirrored", ImageOps.mirror)
    profile = parse_profile({"name": "x", "vision": True, "image_layout": "mirrored"})
    source = Image.new("RGB", (4, 2), "white")
    source.putpixel((0, 0), (0, 0, 0))
    result = await normalize_image_url(png_url(source), LIMITS, param="p", layout=profile.image_layout)
    image = Image.open(io.BytesIO(base64.b64decode(result.data_url.partition(",")[2])))
    assert result.data_url.startswith("data:image/png;")  # a redrawn image is always sent lossless
    assert image.getpixel((3, 0)) == (0, 0, 0) and image.getpixel((0, 0)) == (255, 255, 255)


def test_a_profile_naming_no_registered_layout_is_refused() -> None:
    with pytest.raises(ProfileError, match="image_layout is one of as-is, glyph-grid, not 'mirrored'"):
        parse_profile({"name": "x", "image_layout": "mirrored"})
