"""Tiny fake trees in each data set's official layout, with the quirks of the real files.

No patient data: images are random noise, texts are invented. Each writer returns what a correct
preparation must find (kept records with their prompts, skipped records with their reasons), so
tests compare against the fixture's own spec rather than hard-coded numbers. Montgomery and
PatchGastricADC22 live in the package (:mod:`selora.assets.layouts`), which the rehearsal's assets
use too; IU X-Ray's fake trees (both layouts, every quirk) are here.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from selora.assets.layouts import (  # noqa: F401  (re-exported for the tests)
    PAPER_SUBTYPES,
    Expect,
    corrupt_image,
    noise_image,
    slide_id,
    truncated_image,
    write_montgomery,
    write_patchgastric,
)


# ----------------------------------------------------------------------------- IU X-Ray
@dataclass
class IuReport:
    uid: int
    findings: str
    impression: str
    images: list[tuple[str, str]]  # (NLM image id, "Frontal"|"Lateral") in document order


def iu_reports(n: int) -> list[IuReport]:
    """``n`` ordinary reports: frontal first for even uids, lateral first for odd ones."""
    out = []
    for uid in range(1, n + 1):
        f = (f"CXR{uid}_IM-{uid:04d}-1001", "Frontal")
        lat = (f"CXR{uid}_IM-{uid:04d}-2001", "Lateral")
        out.append(IuReport(uid, f"The heart is normal in size. XXXX lungs are clear, case {uid}.",
                            f"No acute disease {uid}.", [f, lat] if uid % 2 == 0 else [lat, f]))
    return out


def _nlm_xml(r: IuReport) -> str:
    images = "".join(
        f'<parentImage id="{i}"><figureId>F{k}</figureId><caption>Xray Chest PA and Lateral</caption>'
        f"<panel type=\"single\"><url>/x/{i}.jpg</url></panel></parentImage>"
        for k, (i, _) in enumerate(r.images, 1)
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<eCitation><meta type="rr"/>'
        f'<uId id="CXR{r.uid}"/><pmcId id="{r.uid}"/><MedlineCitation><Article><Abstract>'
        '<AbstractText Label="COMPARISON">None.</AbstractText>'
        '<AbstractText Label="INDICATION">XXXX-year-old male, chest pain.</AbstractText>'
        f'<AbstractText Label="FINDINGS">{r.findings}</AbstractText>'
        f'<AbstractText Label="IMPRESSION">{r.impression}</AbstractText>'
        f"</Abstract></Article></MedlineCitation><MeSH><major>normal</major></MeSH>{images}</eCitation>\n"
    )


def write_iu(root: Path, layout: str, n: int = 30, quirks: bool = True) -> Expect:
    """IU X-Ray in the ``nlm`` or ``kaggle`` layout; the NLM tree gets ``views.csv`` beside it."""
    reports = iu_reports(n)
    exp = Expect()
    for r in reports:
        exp.kept[f"CXR{r.uid}"] = r.findings
    frontal = {f"CXR{r.uid}": next(i for i, v in r.images if v == "Frontal") for r in reports}
    first = {f"CXR{r.uid}": r.images[0][0] for r in reports}
    bad_images: dict[str, str] = {}  # image id -> "missing" | "corrupt" | "truncated"
    if quirks:
        k = n + 1
        impr = IuReport(k, "   ", "Heart size XXXX. No   acute\n disease.",
                        [(f"CXR{k}_IM-9001-1001", "Frontal")])
        exp.kept[f"CXR{k}"] = "Heart size XXXX. No acute disease."
        frontal[f"CXR{k}"] = first[f"CXR{k}"] = impr.images[0][0]
        empty = IuReport(k + 1, "", "", [(f"CXR{k + 1}_IM-9002-1001", "Frontal")])
        exp.skipped[f"CXR{k + 1}"] = "empty findings and impression"
        missing = IuReport(k + 2, "Findings with a missing image.", "",
                           [(f"CXR{k + 2}_IM-9003-1001", "Frontal")])
        exp.skipped[f"CXR{k + 2}"] = "image file missing"
        corrupt = IuReport(k + 3, "Findings with a corrupt image.", "",
                           [(f"CXR{k + 3}_IM-9004-1001", "Frontal")])
        exp.skipped[f"CXR{k + 3}"] = "unreadable image"
        trunc = IuReport(k + 4, "Findings with a truncated image.", "",
                         [(f"CXR{k + 4}_IM-9005-1001", "Frontal")])
        exp.skipped[f"CXR{k + 4}"] = "unreadable image"
        lateral_only = IuReport(k + 5, "Only a lateral view.", "", [(f"CXR{k + 5}_IM-9006-2001", "Lateral")])
        exp.skipped[f"CXR{k + 5}"] = "no frontal image"
        no_image = IuReport(k + 6, "No image at all.", "", [])
        exp.skipped[f"CXR{k + 6}"] = "report has no image"
        # Two frontal images, the first unreadable: the second is used.
        two = [(f"CXR{k + 7}_IM-9007-1001", "Frontal"), (f"CXR{k + 7}_IM-9007-1002", "Frontal")]
        fallback = IuReport(k + 7, "XXXX findings with a corrupt first frontal image.", "", two)
        exp.kept[f"CXR{k + 7}"] = fallback.findings
        frontal[f"CXR{k + 7}"] = fallback.images[1][0]
        first[f"CXR{k + 7}"] = fallback.images[0][0]
        # A second image listed in the view table with a blank view, and one absent from the table.
        blank = IuReport(k + 8, "Second view blank, XXXX.", "", [(f"CXR{k + 8}_IM-9008-1001", "Frontal"),
                                                          (f"CXR{k + 8}_IM-9008-2001", "Blank")])
        absent = IuReport(k + 9, "Second view absent, XXXX.", "", [(f"CXR{k + 9}_IM-9009-1001", "Frontal"),
                                                            (f"CXR{k + 9}_IM-9009-2001", "Absent")])
        for r in (blank, absent):
            exp.kept[f"CXR{r.uid}"] = r.findings
            frontal[f"CXR{r.uid}"] = first[f"CXR{r.uid}"] = r.images[0][0]
        bad_images = {missing.images[0][0]: "missing", corrupt.images[0][0]: "corrupt",
                      trunc.images[0][0]: "truncated", fallback.images[0][0]: "corrupt"}
        reports += [impr, empty, missing, corrupt, trunc, lateral_only, no_image, fallback, blank, absent]
        exp.extra["lateral_only"] = f"CXR{k + 5}"
        exp.extra["fallback"] = f"CXR{k + 7}"
    exp.extra.update(frontal=frontal, first=first, n_reports=len(reports))
    if layout == "nlm":
        _write_nlm(root, reports, bad_images, quirks, exp)
    else:
        _write_kaggle(root, reports, bad_images, quirks, exp)
    return exp


def _write_images(folder: Path, reports: list[IuReport], bad: dict[str, str], name) -> None:
    for r in reports:
        for j, (image, _) in enumerate(r.images):
            path = folder / name(r, image)
            kind = bad.get(image)
            if kind == "missing":
                continue
            if kind == "corrupt":
                corrupt_image(path)
            elif kind == "truncated":
                truncated_image(path)
            else:
                w, h = (40, 52) if j == 0 else (52, 40)
                noise_image(path, w, h, seed=r.uid * 10 + j)


def _write_nlm(root: Path, reports: list[IuReport], bad: dict[str, str], quirks: bool, exp: Expect) -> None:
    xml_dir = root / "ecgen-radiology"
    xml_dir.mkdir(parents=True)
    for r in reports:
        (xml_dir / f"{r.uid}.xml").write_text(_nlm_xml(r), encoding="utf-8")
    _write_images(root / "NLMCXR_png", reports, bad, lambda r, i: f"{i}.png")
    with (root.parent / f"{root.name}-views.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["imageid", "View Position"])
        views = {"Frontal": "PA", "Lateral": "LL", "Blank": ""}
        for r in reports:
            for image, view in r.images:
                if view in views:
                    w.writerow([image, views[view]])
    exp.extra["views"] = root.parent / f"{root.name}-views.csv"
    if quirks:
        n = len(reports)
        # Not well-formed XML, then a well-formed one whose findings hold a Latin-1 byte (invalid UTF-8).
        (xml_dir / f"{n + 100}.xml").write_text("<eCitation><uId id='CXR999'/><Abstract>", encoding="utf-8")
        exp.skipped[f"{n + 100}.xml"] = "invalid XML"
        latin = _nlm_xml(IuReport(n + 101, "Caf\xe9 opacity.", "",
                                  [(f"CXR{n + 101}_IM-9100-1001", "Frontal")]))
        (xml_dir / f"{n + 101}.xml").write_bytes(latin.encode("latin-1"))
        exp.skipped[f"{n + 101}.xml"] = "invalid XML"
        # A second file with the uid of report 2: the first one is kept.
        dup = _nlm_xml(IuReport(2, "Duplicate report.", "", reports[1].images))
        (xml_dir / f"{n + 102}.xml").write_text(dup, encoding="utf-8")
        exp.skipped["CXR2"] = "duplicate id"


def _write_kaggle(root: Path, reports: list[IuReport], bad: dict[str, str], quirks: bool,
                  exp: Expect) -> None:
    def fname(r: IuReport, image: str) -> str:
        return image.removeprefix("CXR") + ".dcm.png"

    root.mkdir(parents=True)
    _write_images(root / "images" / "images_normalized", reports, bad, fname)
    header = ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")  # quotes the line breaks inside findings
    writer.writerow(header)
    proj = ["uid,filename,projection"]
    for r in reports:
        writer.writerow([r.uid, "normal", "normal", "Xray Chest PA and Lateral", "XXXX-year-old", "None.",
                         r.findings, r.impression])
        proj += [f"{r.uid},{fname(r, i)},{v if v in ('Frontal', 'Lateral') else ''}"
                 for i, v in r.images if v != "Absent"]
    data = buf.getvalue().encode()
    if quirks:
        n = len(reports)
        data += b'2,normal,normal,x,x,x,"Duplicate report.",""\n'
        exp.skipped["CXR2"] = "duplicate id"
        data += f'{n + 50},normal,normal,x,x,x,"Caf'.encode() + b"\xe9" + b' opacity.",""\n'
        exp.skipped[f"CXR{n + 50}"] = "text is not valid UTF-8"
        proj.append(f"{n + 50},{n + 50}_IM-7000-1001.dcm.png,Frontal")
        proj.append(f"{n + 60},{n + 60}_IM-7001-1001.dcm.png,Frontal")
        exp.skipped[f"CXR{n + 60}"] = "images of a uid not in indiana_reports.csv"
        proj.append("4,4_IM-0004-3001.dcm.png,Oblique")  # counted as "view unknown", report 4 kept
    (root / "indiana_reports.csv").write_bytes(data)
    (root / "indiana_projections.csv").write_text("\n".join(proj) + "\n")
