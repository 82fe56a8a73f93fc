"""Every ingredient of the paper path, built offline into one folder (``selora rehearsal-assets``).

    <out>/sd15/                 SD 1.5 architecture, random weights, CLIP's tokenizer (base_model.name)
    <out>/sd15-narrow/          the same layer structure at narrow widths (sd15.NARROW; CI's rehearsal)
    <out>/inception/            FID Inception-v3 state dict, random weights (evaluate.inception_weights)
    <out>/clip/                 small random CLIP with the real tokenizer (evaluate.clip_model)
    <out>/raw/iu-xray/          NLM layout: every real report XML, view tables, placeholder PNGs
    <out>/raw/montgomery/       MontgomerySet/ (CXR_png, ClinicalReadings), generated
    <out>/raw/patchgastric/     captions.csv + patches/, generated

Only ``pip download`` (of two wheels, into the wheel cache) touches the network. Each folder is
written atomically with a marker (:mod:`selora.assets.marker`) holding its spec; a rerun rebuilds
only what is missing or was built from another spec, so a second run changes nothing and Snakemake,
which sees these folders as inputs, reruns nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selora.assets.marker import is_current, write_marker
from selora.data import iuxray, montgomery, patchgastric
from selora.io import atomic_dir, file_sha256

LAYOUT_VERSION = 1
IMAGE_SIZE = 64  # placeholder pixels; prepare resizes to each setup's size
MONTGOMERY = {"n_normal": 8, "n_tb": 4}
PATCHGASTRIC = {"slides": 4, "patches": 4}


@dataclass
class Built:
    name: str
    path: Path
    built: bool
    seconds: float


def _layout_spec(name: str, **extra: object) -> dict:
    return {"builder": f"selora.assets.layouts.{name}", "version": LAYOUT_VERSION, **extra}


def _write_generated(out: Path, name: str, what: str, records: Callable[[Any], int],
                     **sizes: int) -> bool:
    """A generated layout (``selora.assets.layouts.write_<name>``) with its marker; False: current."""
    from selora.assets import layouts

    spec = _layout_spec(name, **sizes)
    if is_current(out, spec):
        return False
    with atomic_dir(out, durable=False) as tmp:
        exp = getattr(layouts, f"write_{name}")(tmp, **sizes)
        write_marker(tmp, what, spec, records=records(exp), skipped=len(exp.skipped))
    return True


def write_montgomery_raw(out: Path) -> bool:
    return _write_generated(out, montgomery.NAME, "Montgomery County CXR layout with noise images and "
                            "invented readings", lambda exp: len(exp.kept), **MONTGOMERY)


def write_patchgastric_raw(out: Path) -> bool:
    return _write_generated(out, patchgastric.NAME, "PatchGastricADC22 layout with noise patches and "
                            "invented captions", lambda exp: len(exp.extra["captions"]), **PATCHGASTRIC)


def write_iu_xray_raw(out: Path, reports_tgz: Path, dicom_csv_gz: Path, tsne_csv_gz: Path) -> bool:
    """The NLM tree of every real report (3,955) with both real view tables (DICOM headers;
    torchxrayvision's t-SNE PA/L table, which params-paper.yaml uses); pixels are not real. The
    rehearsal trains on a few (``setups.<name>.max_records``); its data report reads them all."""
    from selora.assets.nlm import write_nlm_tree

    spec = _layout_spec("iu-xray-nlm", reports="all", size=IMAGE_SIZE,
                        reports_sha256=file_sha256(reports_tgz), views_sha256=file_sha256(dicom_csv_gz),
                        tsne_sha256=file_sha256(tsne_csv_gz))
    if is_current(out, spec):
        return False
    info = write_nlm_tree(out, reports_tgz, dicom_csv_gz, size=IMAGE_SIZE, tsne_csv_gz=tsne_csv_gz)
    # Written last: a tree without it (killed between the two writes) is rebuilt.
    write_marker(out, "IU X-Ray NLM layout: every real report, placeholder images",
                 spec, reports=info["reports"], images=info["images"])
    return True


def build(out: Path, cache: Path | None = None, say: Callable[[str], None] = print,
          sd15_variant: str = "full") -> list[Built]:
    """Build (or keep) every ingredient under ``out``; returns what was built and how long it took.
    ``sd15_variant``: SD 1.5 at its real widths (``sd15/``) or narrow (``sd15-narrow/``)."""
    from selora import sd15
    from selora.assets.cliptok import clip_bpe
    from selora.assets.metric_weights import write_fid_inception, write_small_clip
    from selora.assets.nlm import nlm_sources, nlm_tsne_views
    from selora.assets.sd15_base import write_sd15_base

    out = Path(out)
    bpe = clip_bpe(cache)
    reports, views = nlm_sources(cache)
    tsne = nlm_tsne_views(cache)
    base, configs = {"full": ("sd15", None), "narrow": ("sd15-narrow", sd15.NARROW)}[sd15_variant]
    steps: list[tuple[str, Path, Callable[[Path], bool]]] = [
        (base, out / base, lambda p: write_sd15_base(p, bpe, configs=configs)),
        ("inception", out / "inception", write_fid_inception),
        ("clip", out / "clip", lambda p: write_small_clip(p, bpe)),
        (f"raw/{iuxray.NAME}", out / "raw" / iuxray.NAME,
         lambda p: write_iu_xray_raw(p, reports, views, tsne)),
        (f"raw/{montgomery.NAME}", out / "raw" / montgomery.NAME, write_montgomery_raw),
        (f"raw/{patchgastric.NAME}", out / "raw" / patchgastric.NAME, write_patchgastric_raw),
    ]
    done = []
    for name, path, write in steps:
        t = time.perf_counter()
        built = write(path)
        done.append(Built(name, path, built, time.perf_counter() - t))
        say(f"{name:18s} {'built' if built else 'up to date':10s} {done[-1].seconds:6.1f} s  {path}")
    return done
