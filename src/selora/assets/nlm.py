"""The official NLM IU X-Ray tree from the real reports, with placeholder images.

The torchxrayvision wheel ships the NLM distribution's report XMLs (``NLMCXR_reports.tgz``) and
the DICOM headers of its images (``nlmcxr_dicom_metadata.csv.gz``, with ``View Position``), but no
images. :func:`write_nlm_tree` lays them out as a user's download would be unpacked
(``ecgen-radiology/*.xml``, ``NLMCXR_png/<image id>.png``, the view table beside them), with a
small deterministic grayscale PNG for every image a report references: everything but pixels is
real, so ``selora prepare`` meets the real reports' quirks and real prompt lengths.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from selora.assets.wheels import find_wheel_file
from selora.errors import AssetUnavailableError
from selora.io import atomic_dir

TORCHXRAYVISION = ("torchxrayvision", "1.5.7")
REPORTS_MEMBER = "torchxrayvision/data/NLMCXR_reports.tgz"
REPORTS_SHA256 = "8fb6de7eec73d8c3665067ad4bb003ccd57f971ae316d2642e1627ac7268667a"
DICOM_MEMBER = "torchxrayvision/data/nlmcxr_dicom_metadata.csv.gz"
DICOM_SHA256 = "996c7d7a23b6bef51b1308dfa9671fb59b00e67c8928f7ff45cc002ca16ebf3e"
TSNE_MEMBER = "torchxrayvision/data/nlmcxr_tsne_pa.csv.gz"
TSNE_SHA256 = "98d66188265a15f00038a5c894adeeaafcd78dbf82f687308f1443793805a253"
XML_DIR, PNG_DIR, VIEW_TABLE = "ecgen-radiology", "NLMCXR_png", "nlmcxr_dicom_metadata.csv.gz"
TSNE_TABLE = "nlmcxr_tsne_pa.csv.gz"  # where params-paper.yaml's datasets.iu-xray.views points
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def nlm_sources(cache: Path | None = None) -> tuple[Path, Path]:
    """``(NLMCXR_reports.tgz, nlmcxr_dicom_metadata.csv.gz)`` out of the torchxrayvision wheel."""
    return (find_wheel_file(*TORCHXRAYVISION, REPORTS_MEMBER, cache, sha256=REPORTS_SHA256),
            find_wheel_file(*TORCHXRAYVISION, DICOM_MEMBER, cache, sha256=DICOM_SHA256))


def nlm_tsne_views(cache: Path | None = None) -> Path:
    """torchxrayvision's t-SNE-derived PA/L table (``nlmcxr_tsne_pa.csv.gz``): its own OpenI
    loader's remedy for the DICOM headers' noisy or blank View Position."""
    return find_wheel_file(*TORCHXRAYVISION, TSNE_MEMBER, cache, sha256=TSNE_SHA256)


def placeholder_png(image_id: str, size: int) -> bytes:
    """A ``size``² grayscale PNG whose pixels depend only on ``image_id`` (distinct per image, so
    feature statistics of a set are not degenerate)."""
    seed = int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size)[None, :] * rng.uniform(40, 160)
    pixels = np.clip(rng.normal(rng.uniform(40, 200), 20, (size, size)) + ramp, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _extract_reports(reports_tgz: Path, dest: Path) -> list[Path]:
    """The ``ecgen-radiology/*.xml`` members of the archive, written flat into ``dest``."""
    dest.mkdir()
    out = []
    try:
        with tarfile.open(reports_tgz, "r:gz") as tar:
            for member in tar:
                name = Path(member.name)
                if not member.isfile() or name.suffix != ".xml" or name.parent.name != XML_DIR:
                    continue
                src = tar.extractfile(member)
                if src is None or not _SAFE_ID.fullmatch(name.name):
                    continue
                (dest / name.name).write_bytes(src.read())
                out.append(dest / name.name)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise AssetUnavailableError(f"{reports_tgz}: not a readable NLMCXR_reports.tgz ({exc})") from exc
    if not out:
        raise AssetUnavailableError(f"{reports_tgz}: no {XML_DIR}/*.xml inside")
    return out


def write_nlm_tree(out_dir: Path, reports_tgz: Path, dicom_csv_gz: Path, size: int = 32,
                   tsne_csv_gz: Path | None = None) -> dict:
    """Write the NLM tree atomically into ``out_dir``; returns ``{"raw", "views", "tsne_views",
    "reports", "images"}``: the folder for ``--raw``, the DICOM view table and (when
    ``tsne_csv_gz`` is given) the t-SNE one, both inside the tree, and the counts. The tree is
    complete or absent, but not fsynced (rebuild it after a power loss)."""
    out_dir = Path(out_dir)
    # Not fsynced file by file (7,470 fsyncs took 16 s here): the tree is rebuilt from cached inputs.
    with atomic_dir(out_dir, durable=False) as tmp:
        xmls = _extract_reports(Path(reports_tgz), tmp / XML_DIR)
        images: list[str] = []
        for path in xmls:
            try:
                root = ET.parse(path).getroot()
            except ET.ParseError:
                continue  # left as it is: the parser must report it
            ids = (el.get("id", "").strip() for el in root.iter("parentImage"))
            images += [i for i in ids if _SAFE_ID.fullmatch(i)]
        (tmp / PNG_DIR).mkdir()
        for image_id in sorted(set(images)):
            (tmp / PNG_DIR / f"{image_id}.png").write_bytes(placeholder_png(image_id, size))
        shutil.copyfile(dicom_csv_gz, tmp / VIEW_TABLE)
        if tsne_csv_gz is not None:
            shutil.copyfile(tsne_csv_gz, tmp / TSNE_TABLE)
    return {"raw": out_dir, "views": out_dir / VIEW_TABLE,
            "tsne_views": out_dir / TSNE_TABLE if tsne_csv_gz is not None else None,
            "reports": len(xmls), "images": len(set(images))}
