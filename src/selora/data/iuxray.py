"""IU X-Ray (Open-i, Indiana University) from either public distribution.

Layouts (found anywhere under ``--raw``):

- **Kaggle**: ``indiana_reports.csv`` (``uid, findings, impression, ...``) +
  ``indiana_projections.csv`` (``uid, filename, projection``) + the PNGs (``images/images_normalized``).
  Frontal = ``projection == "Frontal"``.
- **NLM**: ``ecgen-radiology/<n>.xml`` (from ``NLMCXR_reports.tgz``) + the PNGs of ``NLMCXR_png.tgz``,
  each named ``<parentImage/@id>.png``. The XML does not say which image is frontal (both images of
  a report carry the same caption, e.g. "Xray Chest PA and Lateral"), so the view comes from a
  **view table** (``--views`` / ``datasets.iu-xray.views``): a CSV (or .csv.gz) with an image-id
  column (``imageid`` / ``image_id``, or Kaggle's ``filename``) and a view column (``View Position``,
  ``tsne-view``, ``projection`` or ``view``) — e.g. torchxrayvision's ``nlmcxr_dicom_metadata.csv.gz``
  or ``nlmcxr_tsne_pa.csv.gz``, or Kaggle's ``indiana_projections.csv``. PA/AP/Frontal are frontal,
  L/LL/RL/Lateral are lateral, anything else is unknown. When a report's images are all lateral or
  unknown and exactly one is unknown, that one is frontal by elimination (the t-SNE table labels
  only each report's first image; its caption says "PA and lateral").
  **Without a view table** the first ``parentImage`` of each report is taken as its frontal image
  (first-image rule). This is an approximation, stated in the data report: by torchxrayvision's
  t-SNE-derived views, 584 of the 3,851 first images (15%) are lateral.

Rules common to both layouts:

- One image per report: the first frontal image (file/row order) whose file exists and decodes
  (a missing or unreadable one falls back to the report's next frontal image), so a report (one
  study) never lands in two splits and split sizes are exact. Further frontal images of the same
  report are counted, not used.
- A dropped report is one skip entry keyed by its uid (the XML file name when no uid can be read)
  listing its image ids: no image, empty text, no frontal image (the detail gives each image's
  view), no frontal image file, unreadable images. The unused images of kept reports are counted
  by reason: lateral, "view unknown" split into *not in the view table*, *blank view in the view
  table* and *value not recognised*.
- Prompt = the FINDINGS text, whitespace collapsed, ``XXXX`` de-identification tokens kept (the
  paper's prompts keep them). When FINDINGS is empty the IMPRESSION is used instead
  (``labels.text_source = "impression"``); when both are empty the report is skipped.
- ``source_id`` = the report uid as the NLM spells it (``CXR1``; Kaggle's uid ``1`` becomes ``CXR1``).
  Labels: ``{"uid", "projection" (the raw view value), "text_source"}``; ``image_id`` names the image.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from selora.data.common import (
    Candidate,
    PrepareOptions,
    SkipLog,
    clean_text,
    find_path,
    has_undecodable,
    index_images,
    natural_key,
    read_csv_rows,
    require_dir,
)
from selora.data.registry import DatasetSpec, register_dataset
from selora.errors import DatasetFormatError
from selora.sections import param

NAME = "iu-xray"


@dataclass(frozen=True)
class IuXraySource:
    """params ``datasets.iu-xray``."""

    raw: str | None = param("NLM (ecgen-radiology/ + PNGs) or Kaggle (indiana_*.csv + images/) layout.",
                            default=None)
    views: str | None = param("NLM layout: a CSV of image id → view position (e.g. torchxrayvision's "
                              "nlmcxr_dicom_metadata.csv.gz).", default=None)


def default_splits(size: int) -> dict[str, float]:
    """80/16/4 at 224 px (Section 3.4), 70/10/20 at 384 px (Appendix C.1)."""
    if size != 384:
        return {"train": 0.8, "validation": 0.16, "test": 0.04}
    return {"train": 0.7, "validation": 0.1, "test": 0.2}

FRONTAL = {"PA", "AP", "FRONTAL", "AP SUPINE", "AP ERECT", "PA ERECT", "POSTEROANTERIOR",
           "ANTEROPOSTERIOR"}
LATERAL = {"L", "LL", "RL", "LAT", "LATERAL", "LARGE LATERAL", "LEFT LATERAL", "RIGHT LATERAL"}
ID_COLUMNS = ("imageid", "image_id", "filename")
VIEW_COLUMNS = ("View Position", "tsne-view", "projection", "view")
FIRST_IMAGE_RULE = "first image of the report (no view table)"
TABLES_HINT = ("nlmcxr_tsne_pa.csv.gz or nlmcxr_dicom_metadata.csv.gz from the torchxrayvision wheel "
               "(`pip download --no-deps torchxrayvision==1.5.7`, folder torchxrayvision/data/)")


def view_class(value: str) -> str:
    v = " ".join(value.upper().split())
    return "frontal" if v in FRONTAL else "lateral" if v in LATERAL else "unknown"


def choose_text(findings: str | None, impression: str | None) -> tuple[str, str] | None:
    """``(prompt, "findings"|"impression")``, or None when both are empty."""
    if text := clean_text(findings):
        return text, "findings"
    if text := clean_text(impression):
        return text, "impression"
    return None


def collect(opts: PrepareOptions, log: SkipLog) -> tuple[list[Candidate], str]:
    raw = require_dir(opts.raw, "IU X-Ray (NLMCXR_reports.tgz + NLMCXR_png.tgz, or the Kaggle archive)")
    reports_csv = find_path(raw, ["indiana_reports.csv"], want_dir=False)
    if reports_csv is not None:
        out, layout = _collect_kaggle(raw, reports_csv, log), "kaggle"
    else:
        xml_dir = find_path(raw, ["ecgen-radiology"], want_dir=True)
        if xml_dir is None:
            raise DatasetFormatError(
                f"{raw}: neither indiana_reports.csv (Kaggle layout) nor ecgen-radiology/ (NLM layout, "
                "from NLMCXR_reports.tgz) found; unpack the IU X-Ray reports there"
            )
        out, layout = _collect_nlm(raw, xml_dir, opts.views, log), "nlm"
    n_impression = sum(c.labels["text_source"] == "impression" for c in out)
    log.note(f"Prompt = FINDINGS; {n_impression} report(s) with empty findings use their IMPRESSION "
             "(labels.text_source = impression); reports with both empty are skipped.")
    return out, layout


# ----------------------------------------------------------------------------- NLM layout
def load_views(path: Path) -> tuple[dict[str, tuple[str, str]], str]:
    """Image id → (view class, raw value) from a view table, and a line describing it."""
    if not path.is_file():
        raise DatasetFormatError(f"view table {path} does not exist (datasets.iu-xray.views / --views): put "
                                 f"{TABLES_HINT} there, or set views to null for the first-image rule")
    rows = read_csv_rows(path, [])
    first = next(rows, None)
    if first is None:
        raise DatasetFormatError(f"{path}: empty view table")
    header = list(first[1])
    id_col = next((c for c in ID_COLUMNS if c in header), None)
    view_col = next((c for c in VIEW_COLUMNS if c in header), None)
    if id_col is None or view_col is None:
        raise DatasetFormatError(
            f"{path}: a view table needs an image-id column ({' or '.join(ID_COLUMNS)}) and a view "
            f"column ({' or '.join(VIEW_COLUMNS)}); found: {', '.join(header)}"
        )
    views: dict[str, tuple[str, str]] = {}

    def add(row: dict[str, str]) -> None:
        image, value = row.get(id_col, "").strip(), row.get(view_col, "").strip()
        if not image:
            return
        keys = [image]
        if id_col == "filename":  # Kaggle file names: "1_IM-0001-4001.dcm.png" ↔ NLM "CXR1_1_IM-0001-4001"
            stem = image.removesuffix(".png").removesuffix(".dcm")
            keys = [f"CXR{stem}", f"CXR{row.get('uid', '').strip()}_{stem}"]
        for key in keys:
            views.setdefault(key, (view_class(value), value))

    add(first[1])
    for _, row in rows:
        add(row)
    return views, f"view table {path} (columns {id_col!r} → {view_col!r})"


def _collect_nlm(raw: Path, xml_dir: Path, views_path: Path | None, log: SkipLog) -> list[Candidate]:
    views, rule = (load_views(views_path) if views_path else ({}, FIRST_IMAGE_RULE))
    if views_path:
        log.note(f"Frontal images: {rule}; PA/AP/Frontal count as frontal, the first frontal image of "
                 "each report is kept.")
    else:
        log.warn("Frontal images: NO VIEW TABLE was given, so the first parentImage of each report is "
                 "taken as its frontal image. The NLM files do not record the view (both images share one "
                 "caption); by torchxrayvision's t-SNE-derived views about 15% of first images are "
                 f"lateral. Set datasets.iu-xray.views (or --views) to a view table for the paper's "
                 f"frontal-only set: {TABLES_HINT}.")
    pngs = index_images(raw, log, extensions=(".png",))
    xml_files = sorted(xml_dir.glob("*.xml"), key=lambda p: natural_key(p.name))
    if not xml_files:
        raise DatasetFormatError(f"{xml_dir}: no report XML files; unpack NLMCXR_reports.tgz there")
    out = []
    for path in xml_files:
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as exc:
            log.skip(path.name, "invalid XML", f"{path}: {exc}")
            continue
        except OSError as exc:
            log.skip(path.name, "unreadable report file", f"{path}: {exc.strerror or exc}")
            continue
        uid_el = root.find("uId")
        uid = (uid_el.get("id") or "").strip() if uid_el is not None else ""
        if root.tag != "eCitation" or not uid:
            log.skip(path.name, "invalid XML", f"{path}: not an IU X-Ray report (no eCitation/uId/@id)")
            continue
        sections = {el.get("Label", "").upper(): "".join(el.itertext()) for el in root.iter("AbstractText")}
        images = [el.get("id", "").strip() for el in root.iter("parentImage") if el.get("id", "").strip()]
        cand = _choose(uid, path.name, sections.get("FINDINGS"), sections.get("IMPRESSION"), images,
                       views, bool(views_path), pngs, log)
        if cand is not None:
            out.append(cand)
    return out


def _view_of(image: str, views: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """(view class, how the table describes it): tells an image missing from the table from one
    listed with a blank or unrecognised view."""
    if image not in views:
        return "unknown", "not in the view table"
    cls, raw = views[image]
    if cls != "unknown":
        return cls, raw
    return cls, "blank view in the view table" if not raw else f"view {raw!r} not recognised"


def _choose(uid: str, where: str, findings: str | None, impression: str | None, images: list[str],
            views: dict[str, tuple[str, str]], have_table: bool, pngs: dict[str, str],
            log: SkipLog) -> Candidate | None:
    """The one record of an NLM report: its first frontal image that exists (the other existing
    frontal images as fallbacks) and its prompt; or one skip entry naming the report's images."""
    if not images:
        log.skip(uid, "report has no image", where, images=[])
        return None
    text = choose_text(findings, impression)
    if text is None:
        log.skip(uid, "empty findings and impression", where, images=images)
        return None
    if have_table:
        seen = [_view_of(i, views) for i in images]
        classes = [c for c, _ in seen]
        if "frontal" not in classes and "lateral" in classes and classes.count("unknown") == 1:
            # A "PA and lateral" pair whose table knows only the lateral (e.g. the t-SNE table,
            # which labels first images only): the other image is the frontal one.
            k = classes.index("unknown")
            classes[k], seen[k] = "frontal", ("frontal", "frontal by elimination")
        frontal = [i for i, c in zip(images, classes, strict=True) if c == "frontal"]
        if not frontal:
            views_seen = "; ".join(f"{i}: {d}" for i, (_, d) in zip(images, seen, strict=True))
            log.skip(uid, "no frontal image", f"{where}: {views_seen}", images=images)
            return None
    else:
        seen = [("frontal", "unknown (first image)")] + [("unused", "")] * (len(images) - 1)
        frontal = images[:1]
    present = [i for i in frontal if f"{i}.png" in pngs]
    if not present:
        log.skip(uid, "image file missing", f"{where}: no " + ", ".join(f"{i}.png" for i in frontal),
                 images=images)
        return None
    for image, (cls, desc) in zip(images, seen, strict=True):
        if cls == "lateral":
            log.exclude("lateral view")
        elif cls == "unknown":
            log.exclude("view unknown: " + ("value not recognised" if desc.endswith("recognised") else desc))
        elif cls == "unused":
            log.exclude("not the first image of its report (first-image rule)")
        elif image not in present:
            log.exclude("frontal image file missing (the report has another)")
    projection = {i: d for i, (_, d) in zip(images, seen, strict=True)}
    cands = [Candidate(source_id=uid, image=pngs[f"{i}.png"], text=text[0],
                       labels={"uid": uid, "projection": projection[i], "text_source": text[1]},
                       extra={"image_id": i}) for i in present]
    cands[0].fallbacks = cands[1:]
    return cands[0]


# ----------------------------------------------------------------------------- Kaggle layout
def _collect_kaggle(raw: Path, reports_csv: Path, log: SkipLog) -> list[Candidate]:
    proj_csv = find_path(raw, ["indiana_projections.csv"], want_dir=False)
    if proj_csv is None:
        raise DatasetFormatError(f"{raw}: indiana_reports.csv is there but indiana_projections.csv is not; "
                                 "unpack the whole Kaggle archive")
    log.note(f"Frontal images: the projection column of {proj_csv.name} ('Frontal'); the first frontal "
             "image of each report is kept.")
    pngs = index_images(raw, log, extensions=(".png",))
    per_uid: dict[str, list[tuple[str, str]]] = defaultdict(list)
    seen_files: set[str] = set()
    for line, row in read_csv_rows(proj_csv, ["uid", "filename", "projection"]):
        uid, name, projection = row["uid"].strip(), row["filename"].strip(), row["projection"].strip()
        where = f"{proj_csv.name}:{line}"
        if has_undecodable(uid + name + projection):
            log.skip(where, "text is not valid UTF-8", where)
        elif not uid or not name:
            log.skip(where, "empty uid or filename", where)
        elif name in seen_files:
            log.skip(f"CXR{uid}", "duplicate image row", f"{where}: {name} (first row kept)", images=[name])
        else:
            seen_files.add(name)
            per_uid[uid].append((name, projection))
    out = []
    seen_uids: set[str] = set()
    for line, row in read_csv_rows(reports_csv, ["uid", "findings", "impression"]):
        uid = row["uid"].strip()
        where = f"{reports_csv.name}:{line}"
        if has_undecodable("".join(row.values())):
            ok_uid = uid and not has_undecodable(uid)
            images = [n for n, _ in per_uid.get(uid, [])] if ok_uid else None
            log.skip(f"CXR{uid}" if ok_uid else where, "text is not valid UTF-8", where, images=images)
            if ok_uid:
                seen_uids.add(uid)
            continue
        if not uid:
            log.skip(where, "empty uid", where)
            continue
        if uid in seen_uids:
            log.skip(f"CXR{uid}", "duplicate id", f"{where} (first kept)", images=[])
            continue
        seen_uids.add(uid)
        cand = _kaggle_candidate(uid, where, row, per_uid.get(uid, []), pngs, log)
        if cand is not None:
            out.append(cand)
    for uid in sorted(set(per_uid) - seen_uids, key=natural_key):
        names = [n for n, _ in per_uid[uid]]
        log.skip(f"CXR{uid}", "images of a uid not in indiana_reports.csv", f"uid {uid} in {proj_csv.name}",
                 images=names)
    return out


def _kaggle_candidate(uid: str, where: str, row: dict[str, str], images: list[tuple[str, str]],
                      pngs: dict[str, str], log: SkipLog) -> Candidate | None:
    """The one record of a Kaggle report, as :func:`_choose` for the NLM layout."""
    source_id = f"CXR{uid}"
    names = [n for n, _ in images]
    if not images:
        log.skip(source_id, "report has no image", where, images=[])
        return None
    text = choose_text(row["findings"], row["impression"])
    if text is None:
        log.skip(source_id, "empty findings and impression", where, images=names)
        return None
    classes = [view_class(p) for _, p in images]
    frontal = [(n, p) for (n, p), c in zip(images, classes, strict=True) if c == "frontal"]
    if not frontal:
        seen = "; ".join(f"{n}: {p!r}" for n, p in images)
        log.skip(source_id, "no frontal image", f"{where}: projections {seen}", images=names)
        return None
    present = [(n, p) for n, p in frontal if n in pngs]
    if not present:
        log.skip(source_id, "image file missing",
                 f"{where}: no " + ", ".join(n for n, _ in frontal) + " (listed in indiana_projections.csv)",
                 images=names)
        return None
    log.exclude("lateral view", classes.count("lateral"))
    unknown = [p for (_, p), c in zip(images, classes, strict=True) if c == "unknown"]
    log.exclude("view unknown: blank projection", sum(not p for p in unknown))
    log.exclude("view unknown: value not recognised", sum(bool(p) for p in unknown))
    log.exclude("frontal image file missing (the report has another)", len(frontal) - len(present))
    cands = [Candidate(source_id=source_id, image=pngs[n], text=text[0],
                       labels={"uid": source_id, "projection": p, "text_source": text[1]},
                       extra={"image_id": n}) for n, p in present]
    cands[0].fallbacks = cands[1:]
    return cands[0]


register_dataset(DatasetSpec(NAME, IuXraySource, collect, label="IU X-Ray", paper_size=224,
                             default_splits=default_splits, options=("views",),
                             paper_tables={224: "Table 1", 384: "Table 5"}))
