"""Raw data sets in their official layouts, generated: Montgomery County CXR and PatchGastricADC22
with noise images and invented texts (the NLM IU X-Ray tree is :mod:`selora.assets.nlm`).

The same writers serve the tests (tests/raw_fixtures.py) and ``selora rehearsal-assets``, so the
rehearsal meets exactly the layouts, and the quirks of the real files, the tests check. No patient
data: images are noise, texts invented (IU X-Ray's texts are the real, public NLM reports). Each
writer returns what a correct preparation must find (kept records with their prompts, skipped
records with their reasons).
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from selora.data.patchgastric import PAPER_SUBTYPES  # the paper's five, declared with the data set


@dataclass
class Expect:
    """What preparation must produce: source id → prompt for kept records, source → skip reason."""

    kept: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)



def noise_image(path: Path, w: int, h: int, seed: int, mode: str = "L", fmt: str = "PNG") -> None:
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path, format=fmt)


def corrupt_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not image data")


def truncated_image(path: Path, w: int = 40, h: int = 48) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (h, w), dtype=np.uint8)).save(buf, "PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


# ----------------------------------------------------------------------------- Montgomery
def write_montgomery(root: Path, n_normal: int = 12, n_tb: int = 8, quirks: bool = True) -> Expect:
    """``MontgomerySet/{CXR_png,ClinicalReadings}`` under ``root``."""
    base = root / "MontgomerySet"
    png, txt = base / "CXR_png", base / "ClinicalReadings"
    txt.mkdir(parents=True)
    exp = Expect()

    def case(i: int, label: int, body: str, image: str | None = "ok") -> str:
        stem = f"MCUCXR_{i:04d}_{label}"
        (txt / f"{stem}.txt").write_text(body, encoding="utf-8")
        if image == "ok":
            noise_image(png / f"{stem}.png", 48 + i % 3 * 8, 56, seed=i)
        elif image == "corrupt":
            corrupt_image(png / f"{stem}.png")
        return stem

    for i in range(1, n_normal + n_tb + 1):
        label = int(i > n_normal)
        sex = "F " if i % 2 else "M"  # note the trailing space of the real files
        findings = "normal" if label == 0 else f"right upper lobe cavity {i}.\n  Active TB."
        stem = case(i, label, f"Patient's Sex: {sex}\nPatient's Age: {30 + i:03d}Y\n{findings}\n")
        gender = "Female" if i % 2 else "Male"
        text = "normal" if label == 0 else f"right upper lobe cavity {i}. Active TB."
        exp.kept[stem] = f"age:{30 + i}, gender:{gender}, findings:{text}"
    if quirks:
        k = n_normal + n_tb
        s = case(k + 1, 1, "Patient's Sex: O\nPatient's Age: 064Y\nleft effusion.\n")
        exp.kept[s] = "age:64, gender:Other, findings:left effusion."
        s = case(k + 2, 0, "Patient's Sex: F \nPatient's Age: 041Y\nNO REPORT (same pt as MCUCXR_0001_0)\n")
        exp.kept[s] = "age:41, gender:Female, findings:NO REPORT"
        exp.extra["no_report"] = s
        s = f"MCUCXR_{k + 3:04d}_1"
        (txt / f"{s}.txt").write_bytes(b"Patient's Sex: M\nPatient's Age: 050Y\nopacit\xe9 droite\n")
        noise_image(png / f"{s}.png", 48, 56, seed=1)
        exp.skipped[s] = "text is not valid UTF-8"
        s = case(k + 4, 1, "Patient's Sex: M\nPatient's Age: 052Y\ninfiltrate.\n", image=None)
        exp.skipped[s] = "image file missing"
        s = case(k + 5, 1, "Patient's Sex: M\nPatient's Age: 053Y\ninfiltrate.\n", image="corrupt")
        exp.skipped[s] = "unreadable image"
        s = case(k + 6, 0, "Patient's Sex: F\nPatient's Age: 054Y\n\n  \n")
        exp.skipped[s] = "empty findings"
        s = case(k + 7, 0, "Patient's Sex: F\nPatient's Age: unknown\nnormal\n")
        exp.skipped[s] = "missing or unparseable age"
        s = f"MCUCXR_{k + 8:04d}_0"
        noise_image(png / f"{s}.png", 48, 56, seed=2)
        exp.skipped[s] = "no clinical reading"
    return exp


# ----------------------------------------------------------------------------- PatchGastricADC22
def slide_id(subtype: str, j: int) -> str:
    return hashlib.md5(f"{subtype}-{j}".encode()).hexdigest()


def write_patchgastric(root: Path, slides: int = 4, patches: int = 8, quirks: bool = True,
                       corrupt_subtype: str | None = None) -> Expect:
    """``captions.csv`` + ``patches/<slide>_<n>.jpg``: the paper's five subtypes and one other.

    ``corrupt_subtype``: every other patch of that subtype's slides is unreadable.
    """
    root.mkdir(parents=True, exist_ok=True)
    exp = Expect()
    rows = [["id", "subtype", "text"]]
    subtypes = [*PAPER_SUBTYPES, "Papillary adenocarcinoma"]
    captions: dict[str, str] = {}
    for s_index, subtype in enumerate(subtypes):
        for j in range(slides):
            sid = slide_id(subtype, j)
            text = f"Group 5, Adenocarcinoma. {subtype} in slide {j}, pattern {s_index}."
            rows.append([sid, subtype, text])
            captions[sid] = text
            for p in range(patches):
                path = root / "patches" / f"{sid}_{p:03d}{s_index}ab.jpg"
                if subtype == corrupt_subtype and p % 2:
                    corrupt_image(path)
                    exp.extra.setdefault("corrupt", set()).add(path.stem)
                else:
                    noise_image(path, 30, 30, seed=s_index * 1000 + j * 50 + p, mode="RGB", fmt="JPEG")
    exp.extra["captions"] = captions
    data = io.StringIO()
    csv.writer(data, lineterminator="\n").writerows(rows)
    raw = data.getvalue().encode()
    if quirks:
        first = slide_id(PAPER_SUBTYPES[0], 0)
        raw += f'{first},{PAPER_SUBTYPES[1]},"A duplicate row."\n'.encode()
        exp.skipped[first] = "duplicate id"
        empty = slide_id("empty", 0)
        raw += f'{empty},{PAPER_SUBTYPES[0]},""\n'.encode()
        exp.skipped[empty] = "empty text"
        noise_image(root / "patches" / f"{empty}_000zz.jpg", 30, 30, seed=7, mode="RGB", fmt="JPEG")
        latin = slide_id("latin", 0)
        raw += f'{latin},{PAPER_SUBTYPES[0]},"Ad'.encode() + b"\xe9" + b'nocarcinome."\n'
        exp.skipped[latin] = "text is not valid UTF-8"
        orphan = f"{slide_id('orphan', 0)}_000yy"
        noise_image(root / "patches" / f"{orphan}.jpg", 30, 30, seed=8, mode="RGB", fmt="JPEG")
        exp.skipped[f"{orphan}.jpg"] = "slide id not in captions.csv"
    (root / "captions.csv").write_bytes(raw)
    return exp
