"""Synthetic chest-radiograph-like phantoms whose findings text decides what is visible.

Stands in for IU X-Ray on machines without the real data. Each case draws structured findings,
renders a grayscale PA phantom that shows them, and writes a report that reads like real findings
text (with the ``XXXX`` de-identification tokens of IU X-Ray now and then). The labels are saved
beside each image so the alignment between prompt and generated image can later be measured by
reading the findings back from generated images (``selora evaluate``'s finding accuracy).

Radiological convention: the patient faces the viewer, so the patient's **right** is the
**image left**. The heart sits to the patient's left (image right); a pacemaker is in the left
upper chest wall.

Findings (each independent, so combinations occur):

- ``heart``: normal | enlarged (cardiothoracic ratio ≈ 0.45 vs ≈ 0.65)
- ``effusion``: none | right | left | bilateral (opaque lung base with a lateral meniscus)
- ``nodule``: none | right upper | right lower | left upper | left lower (a bright round opacity)
- ``pneumothorax``: none | right | left (a dark, marking-free rim around a collapsed lung)
- ``device``: none | pacemaker (a bright generator in the left chest wall, a lead to the heart)

``synthetic.cxr.findings`` chooses which of them vary (and how often); ``report_style`` whether the
reports paraphrase (``varied``) or say each finding one way (``fixed``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from PIL import Image

from selora.findings import FINDINGS, PRIORS

# Captions of the generic radiographs in the natural set (selora.synthetic.make_natural): they say
# what the image is, never what it shows.
RADIOGRAPH_CAPTIONS = ("a chest x-ray", "a frontal chest radiograph", "an x-ray image of the chest",
                       "a black and white chest x-ray")

# Lung fields in image coordinates (x to the right, y down, both in [0, 1]).
LUNG = {"right": (0.31, 0.45, 0.15, 0.30), "left": (0.69, 0.45, 0.14, 0.29)}
SS = 4  # render at SS × size, then box-downsample
GENERATOR = (0.08, 0.06)  # the pacemaker generator's half-width and half-height (frame = 1)
LEAD_SIGMA = 0.018  # its lead's dots (frame = 1)


def sample_findings(rng: np.random.Generator,
                    priors: Mapping[str, tuple[float, ...]] = PRIORS) -> dict[str, str]:
    """One case's findings: one draw per finding whatever ``priors`` say, so each finding's draw
    does not depend on which of the others vary."""
    return {k: FINDINGS[k][rng.choice(len(FINDINGS[k]), p=priors[k])] for k in FINDINGS}


def is_normal(f: dict[str, str]) -> bool:
    return f["heart"] == "normal" and all(f[k] == "none" for k in FINDINGS if k != "heart")


# ----------------------------------------------------------------------------- rendering
def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float,
             edge: float = 0.08) -> np.ndarray:
    """Soft ellipse mask in [0, 1]."""
    d = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    return 1.0 / (1.0 + np.exp((d - 1.0) / edge))


def _smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1] (bilinear upsampling of a coarse grid): lung markings."""
    coarse = rng.uniform(-1, 1, size=(cells, cells)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((n, n), Image.Resampling.BILINEAR)
    return np.asarray(img)


def render_cxr(findings: dict[str, str], rng: np.random.Generator, size: int) -> Image.Image:
    """A grayscale PA phantom showing ``findings``, drawn at ``SS`` × ``size`` and box-downsampled."""
    x, y = _pose(rng, size * SS)
    img, lungs = _chest(x, y, findings, rng)
    img = _heart(img, x, y, findings["heart"])
    img = _diaphragm(img, x, y)
    img = _effusion(img, x, y, findings["effusion"], lungs)
    img = _nodule(img, x, y, findings["nodule"], rng)
    img = _pacemaker(img, x, y, findings["device"], rng)
    return _expose(img, rng, size)


def _pose(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Image coordinates of the patient's frame (x right, y down, in [0, 1]): a small shift and scale."""
    g = (np.arange(n, dtype=np.float32) + 0.5) / n
    sx, sy = rng.normal(0, 0.015, size=2)
    scale = 1 + rng.normal(0, 0.03)
    x = (g[None, :] - 0.5 - sx) / scale + 0.5
    y = (g[:, None] - 0.5 - sy) / scale + 0.5
    return np.broadcast_to(x, (n, n)), np.broadcast_to(y, (n, n))


def _chest(x: np.ndarray, y: np.ndarray, findings: dict[str, str],
           rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Air, body, lungs with their markings (a pneumothorax collapses one), ribs, mediastinum,
    clavicles; returns the image and each lung's mask."""
    img = np.full(x.shape, 0.03, dtype=np.float32)  # air
    body = _ellipse(x, y, 0.5, 0.62, 0.47, 0.6, edge=0.03)
    img = img * (1 - body) + 0.42 * body
    markings = _smooth_noise(rng, x.shape[0], 12)

    lung_masks = {}
    for side, (cx, cy, ax, ay) in LUNG.items():
        m = _ellipse(x, y, cx, cy, ax, ay, edge=0.05)
        tissue = 0.15 + 0.045 * markings
        if findings["pneumothorax"] == side:
            # Collapsed lung: markings only in the inner core; a dark rim of free air around it.
            core = _ellipse(x, y, cx + (0.03 if side == "right" else -0.03), cy + 0.03,
                            ax * 0.55, ay * 0.6, edge=0.05)
            tissue = tissue * core + 0.02 * (1 - core)
        img = img * (1 - m) + tissue * m
        lung_masks[side] = m

    # Ribs: curved bright bands that show only over the lungs.
    lungs = np.maximum(lung_masks["right"], lung_masks["left"])
    for k in range(7):
        y0 = 0.2 + k * 0.085
        curve = y0 + 0.10 * ((x - 0.5) / 0.4) ** 2
        band = np.exp(-(((y - curve) / 0.011) ** 2))
        img = img + 0.06 * band * lungs

    # Mediastinum / spine, clavicles.
    med = 1.0 / (1.0 + np.exp((np.abs(x - 0.5) - 0.065) / 0.01)) * (y < 0.85)
    img = np.maximum(img, 0.6 * med)
    for sign in (-1, 1):
        cx0 = 0.5 + sign * 0.17
        clav = np.exp(-(((y - (0.14 + 0.1 * (x - cx0) ** 2 * 4)) / 0.012) ** 2)) * (np.abs(x - cx0) < 0.15)
        img = np.maximum(img, 0.55 * clav)
    return img, lung_masks


def _heart(img: np.ndarray, x: np.ndarray, y: np.ndarray, heart: str) -> np.ndarray:
    """The heart, on the patient's left (image right); enlarged: cardiothoracic ratio ≈ 0.65."""
    ax, ay = (0.12, 0.11) if heart == "normal" else (0.2, 0.145)
    mask = _ellipse(x, y, 0.555 + (ax - 0.12) * 0.35, 0.63, ax, ay, edge=0.04)
    return img * (1 - mask) + 0.63 * mask


def _diaphragm(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Diaphragm domes below each lung."""
    for cx, _, ax_l, _ in LUNG.values():
        dome = 0.73 + 0.06 * ((x - cx) / ax_l) ** 2
        window = 1.0 / (1.0 + np.exp((np.abs(x - cx) - ax_l * 1.05) / 0.015))
        below = 1.0 / (1.0 + np.exp(-(y - dome) / 0.01)) * window
        img = np.maximum(img, 0.55 * below)
    return img


def _effusion(img: np.ndarray, x: np.ndarray, y: np.ndarray, effusion: str,
              lungs: dict[str, np.ndarray]) -> np.ndarray:
    """Pleural effusion: an opaque lung base with a meniscus rising laterally."""
    sides = {"right": ("right",), "left": ("left",), "bilateral": ("right", "left")}.get(effusion, ())
    for side in sides:
        cx, _, ax_l, _ = LUNG[side]
        level = 0.56 - 0.07 * np.abs(x - cx) / ax_l
        fluid = 1.0 / (1.0 + np.exp(-(y - level) / 0.012)) * lungs[side]
        img = img * (1 - fluid) + 0.58 * fluid
    return img


def _nodule(img: np.ndarray, x: np.ndarray, y: np.ndarray, nodule: str,
            rng: np.random.Generator) -> np.ndarray:
    """A bright round opacity in the named lobe (at a random place within it)."""
    if nodule == "none":
        return img
    side, lobe = nodule.split()
    cx, cy, ax_l, ay_l = LUNG[side]
    nx = cx + rng.uniform(-0.35, 0.35) * ax_l
    ny = cy + (-0.35 if lobe == "upper" else 0.3) * ay_l + rng.normal(0, 0.02)
    nod = _ellipse(x, y, nx, ny, 0.045, 0.045, edge=0.1)
    return img * (1 - nod) + 0.78 * nod


def _pacemaker(img: np.ndarray, x: np.ndarray, y: np.ndarray, device: str,
               rng: np.random.Generator) -> np.ndarray:
    """A pacemaker: generator in the left upper chest wall, a lead to the heart.

    The generator is life-size (~5.5 × 5 cm on a 35 × 43 cm film: 5 × 4 px at 32 px), the lead
    thicker than life (~1.5 px) so that 32 px resolve it. Drawn smaller (3 × 2 px, a sub-pixel lead)
    it fell inside one latent pixel: no method learnt it in the embedded budget, and how often each
    seed drew it by chance decided most of the FID-ref spread between seeds (benchmarks/README,
    "A pacemaker the miniature can draw")."""
    if device != "pacemaker":
        return img
    gx, gy = 0.80 + rng.normal(0, 0.01), 0.20 + rng.normal(0, 0.01)
    gen = (np.abs(x - gx) < GENERATOR[0]) & (np.abs(y - gy) < GENERATOR[1])
    img = np.where(gen, 0.97, img)
    t = np.linspace(0, 1, 200)
    lx, ly = gx + (0.55 - gx) * t, gy + (0.6 - gy) * t - 0.06 * np.sin(np.pi * t)
    # The lead: 50 Gaussian dots, drawn only within 3.75 σ of their bounding box: farther out a dot
    # is < 0.9·e⁻¹⁴, below every pixel of the film (≥ 0.02), so the image is the one drawing each
    # dot over the whole frame gives (byte-identical files), at a fraction of the time.
    px, py, reach = lx[::4], ly[::4], 3.75 * LEAD_SIGMA
    cols = np.flatnonzero((x[0] > px.min() - reach) & (x[0] < px.max() + reach))
    rows = np.flatnonzero((y[:, 0] > py.min() - reach) & (y[:, 0] < py.max() + reach))
    box = np.ix_(rows, cols)
    bx, by, patch = x[box], y[box], img[box]
    for qx, qy in zip(px, py, strict=True):
        patch = np.maximum(patch, 0.9 * np.exp(-(((bx - qx) ** 2 + (by - qy) ** 2) / LEAD_SIGMA**2)))
    img[box] = patch  # img is np.where's fresh array
    return img


def _expose(img: np.ndarray, rng: np.random.Generator, size: int) -> Image.Image:
    """Exposure: contrast / brightness / gamma jitter, downsampling to ``size``, quantum noise."""
    img = np.clip(img, 0, 1) ** rng.uniform(0.85, 1.15)
    img = img * rng.uniform(0.9, 1.05) + rng.normal(0, 0.02)
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), mode="L")
    pil = pil.resize((size, size), Image.Resampling.BOX)
    arr = np.asarray(pil, dtype=np.float32) + rng.normal(0, 2.0, size=(size, size))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L").convert("RGB")


# ----------------------------------------------------------------------------- reports
def write_report(f: dict[str, str], rng: np.random.Generator, style: str = "varied") -> str:
    """Findings text in the style of IU X-Ray reports; every sentence is decided by ``f``. ``fixed``:
    the first phrasing of each finding and no optional sentence. Written after the image from the
    case's own stream, so the style never changes an image."""
    fixed = style == "fixed"

    def _pick(rng: np.random.Generator, options: list[str]) -> str:
        k = rng.integers(len(options))
        return options[0] if fixed else options[k]

    s: list[str] = []
    if f["heart"] == "normal":
        s.append(_pick(rng, ["The heart is normal in size.", "Heart size is within normal limits.",
                             "Normal cardiomediastinal silhouette.",
                             "The cardiomediastinal silhouette is within normal limits."]))
    else:
        s.append(_pick(rng, ["The heart is enlarged.", "Cardiomegaly.",
                             "The cardiac silhouette is enlarged.", "Stable cardiomegaly."]))
    if f["nodule"] == "none":
        s.append(_pick(rng, ["The lungs are clear.", "No focal airspace consolidation.",
                             "Lungs are clear bilaterally.", "No suspicious pulmonary nodules."]))
    else:
        lobe = f["nodule"] + " lobe"
        s.append(_pick(rng, [f"There is a nodule in the {lobe}.", f"Nodular opacity in the {lobe}.",
                             f"A round density is seen in the {lobe}.",
                             f"Small calcified nodule in the {lobe}."]))
    eff, ptx = f["effusion"], f["pneumothorax"]
    if eff == "none" and ptx == "none":
        s.append(_pick(rng, ["No pleural effusion or pneumothorax.",
                             "No pneumothorax or pleural effusion.",
                             "There is no pleural effusion or pneumothorax."]))
    else:
        if eff == "bilateral":
            s.append(_pick(rng, ["Bilateral pleural effusions.",
                                 "Small bilateral pleural effusions are present."]))
        elif eff != "none":
            s.append(_pick(rng, [f"There is a {eff} pleural effusion.",
                                 f"Small {eff} pleural effusion.",
                                 f"Blunting of the {eff} costophrenic angle, consistent with effusion."]))
        else:
            s.append("No pleural effusion.")
        if ptx != "none":
            s.append(_pick(rng, [f"There is a {ptx} pneumothorax.", f"{ptx.capitalize()}-sided pneumothorax.",
                                 f"Moderate {ptx} apical pneumothorax."]))
        else:
            s.append("No pneumothorax.")
    if f["device"] == "pacemaker":
        s.append(_pick(rng, ["Left chest wall pacemaker in place.",
                             "A left-sided pacemaker is present with lead in the right ventricle.",
                             "Dual lead pacemaker in the left chest wall."]))
    if rng.random() < 0.35 and not fixed:
        s.append(_pick(rng, ["No acute bony abnormality.", "Degenerative changes of the thoracic spine.",
                             "Stable XXXX of the thoracic spine.", "XXXX XXXX are intact.",
                             "Visualized osseous structures are unremarkable."]))
    if is_normal(f) and rng.random() < 0.3 and not fixed:
        s.append("No acute cardiopulmonary abnormality.")
    return " ".join(s)
