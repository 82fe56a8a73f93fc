"""The "natural" image–caption set the miniature Stable Diffusion is pre-trained on.

Simple coloured scenes: one or two shapes (circle, square, triangle, ring, bar) of a named colour
and size at a named position, on a plain, gradient or striped background, with a caption that
names what is drawn ("a large red circle in the upper left on a gray background"). Spatial words
(left/right/upper/lower, small/large) are shared with the radiology reports of the synthetic CXR
set, as everyday English is shared between SD 1.5's training captions and real reports. Grey
scenes and stripes are included so the VAE learns to code textures, not only flat colours.

Every object comes with its phrase and bounding box (``objects.jsonl`` beside the manifest), as
grounding data sets pair a caption's phrases with boxes: pre-training uses them to teach the
miniature's cross-attention where each phrase is drawn (:mod:`selora.grounding`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SS = 4  # super-sampling factor: draw large, downsample with a box filter (anti-aliasing)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 40),
    "orange": (240, 140, 30),
    "purple": (140, 50, 180),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (10, 10, 10),
    "white": (240, 240, 240),
    "gray": (120, 120, 120),
    "dark blue": (20, 25, 70),
    "light green": (170, 220, 170),
    "beige": (225, 210, 170),
}
SHAPES = ("circle", "square", "triangle", "ring", "bar")
POSITIONS: dict[str, tuple[float, float]] = {
    "upper left": (0.27, 0.27),
    "upper right": (0.73, 0.27),
    "lower left": (0.27, 0.73),
    "lower right": (0.73, 0.73),
    "center": (0.5, 0.5),
    "top": (0.5, 0.22),
    "bottom": (0.5, 0.78),
    "left": (0.22, 0.5),
    "right": (0.78, 0.5),
}
SIZES = {"small": 0.12, "large": 0.24}
SCENE_LABELS = ("shape", "colour", "size", "position")  # of a scene's first object
PREPOSITION = {"upper left": "in the", "upper right": "in the", "lower left": "in the",
               "lower right": "in the", "center": "in the", "top": "at the", "bottom": "at the",
               "left": "on the", "right": "on the"}


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
               colour: tuple[int, int, int], width: int) -> None:
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r * 0.35)))
    elif shape == "bar":
        draw.rectangle([cx - r * 1.3, cy - r * 0.4, cx + r * 1.3, cy + r * 0.4], fill=colour)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)


def _shape_box(shape: str, cx: float, cy: float, r: float) -> tuple[float, float, float, float]:
    """The box (x0, y0, x1, y1) :func:`draw_shape` fills, in the same units."""
    if shape == "bar":
        return cx - r * 1.3, cy - r * 0.4, cx + r * 1.3, cy + r * 0.4
    if shape == "triangle":
        return cx - r, cy - r, cx + r, cy + r * 0.8
    return cx - r, cy - r, cx + r, cy + r


def _background(rng: np.random.Generator, size: int) -> tuple[Image.Image, str, str]:
    name = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    base = np.array(BACKGROUNDS[name], dtype=np.float32)
    style = rng.choice(["plain", "plain", "gradient", "stripes"])
    y = np.linspace(-1, 1, size, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(base, (size, size, 3)).copy()
    caption = f"on a {name} background"
    if style == "gradient":
        img = img + y * 35.0
        caption = f"on a {name} gradient background"
    elif style == "stripes":
        period = rng.integers(5, 9) * SS
        rows = (np.arange(size) // (period // 2)) % 2
        img = img + (rows[:, None, None] * 2 - 1) * 25.0
        caption = f"on a {name} striped background"
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), caption, name


def _visible_colours(background: str) -> list[str]:
    """Colours that stand out from the background (no white square on white)."""
    bg = np.array(BACKGROUNDS[background], dtype=np.float32)
    return [c for c, rgb in COLOURS.items() if np.abs(np.array(rgb) - bg).sum() > 120]


def render_scene(rng: np.random.Generator, size: int) -> tuple[Image.Image, str, dict, list[dict]]:
    """One scene, its caption, the structured labels of its first object, and every object's
    phrase with its box in [0, 1] image coordinates (``{"phrase", "box": [x0, y0, x1, y1]}``)."""
    big = size * SS
    img, bg_caption, bg_name = _background(rng, big)
    colours = _visible_colours(bg_name)
    draw = ImageDraw.Draw(img)
    n_objects = 1 if rng.random() < 0.7 else 2
    positions = rng.choice(list(POSITIONS), size=n_objects, replace=False)
    phrases, labels, objects = [], {}, []
    for i, pos in enumerate(positions):
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = colours[rng.integers(len(colours))]
        size_name = "small" if rng.random() < 0.5 else "large"
        cx, cy = POSITIONS[pos]
        jitter = rng.normal(0, 0.03, size=2)
        r = SIZES[size_name] * (1 + rng.normal(0, 0.08))
        cx, cy = cx + jitter[0], cy + jitter[1]
        draw_shape(draw, shape, cx * big, cy * big, r * big, COLOURS[colour], width=SS)
        phrases.append(f"a {size_name} {colour} {shape} {PREPOSITION[pos]} {pos}")
        box = [float(np.clip(v, 0.0, 1.0)) for v in _shape_box(shape, cx, cy, r)]
        objects.append({"phrase": phrases[-1], "box": [round(v, 4) for v in box]})
        if i == 0:
            labels = {"shape": shape, "colour": colour, "size": size_name, "position": str(pos)}
    caption = " and ".join(phrases) + f" {bg_caption}"
    img = img.resize((size, size), Image.Resampling.BOX)
    if rng.random() < 0.2:  # some soft images, so the VAE sees blur as well as edges
        img = img.filter(ImageFilter.GaussianBlur(radius=0.6))
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 3.0, size=(size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), caption, labels, objects
