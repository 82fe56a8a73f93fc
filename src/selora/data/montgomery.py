"""Montgomery County CXR set (NLM): ``MontgomerySet/CXR_png`` + ``MontgomerySet/ClinicalReadings``.

Each ``ClinicalReadings/MCUCXR_0001_0.txt`` holds ``Patient's Sex: F `` (trailing space; ``M``,
``F`` or ``O``), ``Patient's Age: 040Y`` and then the free-text findings. The image is
``CXR_png/<same stem>.png``; the stem's suffix is the label (``_0`` normal, ``_1`` tuberculosis).

Prompt, as in the paper (Figure 7): ``age:32, gender:Male, findings:<findings>`` — age without
leading zeros or the ``Y``, sex spelled ``Male`` / ``Female`` / ``Other`` (for ``O``), findings with
whitespace collapsed and otherwise verbatim.

``NO REPORT (same pt as MCUCXR_0xxx)`` cases are kept, so the set has the paper's 138 images and
its 80/20 split sizes: the prompt's findings are ``NO REPORT`` (the cross-reference names another
file, not a finding), ``labels.no_report`` is true and ``same_patient_as`` keeps the referenced id
("" for other records).

Labels: ``{"tb": 0|1, "sex": ..., "age": int, "no_report": bool}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from selora.data.common import Candidate, PrepareOptions, SkipLog, clean_text, find_path, require_dir
from selora.data.registry import DatasetSpec, register_dataset
from selora.errors import DatasetFormatError
from selora.sections import param

NAME = "montgomery"


@dataclass(frozen=True)
class MontgomerySource:
    """params ``datasets.montgomery``."""

    raw: str | None = param("The unpacked MontgomerySet/ folder.", default=None)

SEX = {"M": "Male", "F": "Female", "O": "Other"}
_SEX_LINE = re.compile(r"^\s*patient'?s\s+sex\s*:(.*)$", re.IGNORECASE)
_AGE_LINE = re.compile(r"^\s*patient'?s\s+age\s*:(.*)$", re.IGNORECASE)
_AGE = re.compile(r"^0*(\d+)\s*Y?$", re.IGNORECASE)
_NO_REPORT = re.compile(r"^no report\b", re.IGNORECASE)
_SAME_PT = re.compile(r"same\s+p(?:atien)?t\s+as\s+([A-Za-z0-9_]+)", re.IGNORECASE)
_STEM = re.compile(r"^(.+)_([01])$")


def parse_reading(text: str) -> tuple[str | None, str | None, str]:
    """``(sex code, age field, findings)`` of one clinical reading (fields None when absent)."""
    sex = age = None
    rest = []
    for line in text.splitlines():
        if (m := _SEX_LINE.match(line)) and sex is None:
            sex = m.group(1).strip()
        elif (m := _AGE_LINE.match(line)) and age is None:
            age = m.group(1).strip()
        else:
            rest.append(line)
    return sex, age, clean_text(" ".join(rest))


def build_prompt(age: int, sex: str, findings: str) -> str:
    """The paper's Montgomery prompt: ``age:32, gender:Male, findings:...``."""
    return f"age:{age}, gender:{sex}, findings:{findings}"


def collect(opts: PrepareOptions, log: SkipLog) -> tuple[list[Candidate], str]:
    raw = require_dir(opts.raw, "the Montgomery County CXR set (NLM-MontgomeryCXRSet.zip)")
    readings = find_path(raw, ["ClinicalReadings"], want_dir=True, what="ClinicalReadings folders")
    images = find_path(raw, ["CXR_png"], want_dir=True, what="CXR_png folders")
    if readings is None or images is None:
        missing = "ClinicalReadings/" if readings is None else "CXR_png/"
        raise DatasetFormatError(
            f"{raw}: no {missing} folder found; --raw must be the unpacked MontgomerySet/ (with "
            "CXR_png/ and ClinicalReadings/) or a folder above it"
        )
    candidates: list[Candidate] = []
    txt_stems = set()
    for path in sorted(readings.glob("*.txt")):
        stem = path.stem
        txt_stems.add(stem)
        cand = _candidate(path, images / f"{stem}.png", log)
        if cand is not None:
            candidates.append(cand)
    for png in sorted(images.glob("*.png")):
        if png.stem not in txt_stems:
            log.skip(png.stem, "no clinical reading", f"{png} has no {readings.name}/{png.stem}.txt")
    if not candidates and not log.skipped:
        raise DatasetFormatError(f"{readings}: no clinical readings (*.txt) found")
    n_no_report = sum(c.labels["no_report"] for c in candidates)
    log.note(f"{n_no_report} reading(s) say NO REPORT: kept with findings 'NO REPORT' "
             "(labels.no_report = true) so the set keeps the paper's size")
    return candidates, "nlm"


def _candidate(path: Path, image: Path, log: SkipLog) -> Candidate | None:
    stem = path.stem
    m = _STEM.match(stem)
    if m is None:
        log.skip(stem, "file name does not end in _0 (normal) or _1 (TB)", str(path))
        return None
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        log.skip(stem, "text is not valid UTF-8", f"{path}: byte {exc.start}")
        return None
    except OSError as exc:
        log.skip(stem, "unreadable text file", f"{path}: {exc.strerror or exc}")
        return None
    sex_code, age_field, findings = parse_reading(text)
    if not sex_code or sex_code.upper() not in SEX:
        log.skip(stem, "missing or unknown sex", f"{path}: Patient's Sex {sex_code!r}")
        return None
    age_m = _AGE.match(age_field or "")
    if age_m is None:
        log.skip(stem, "missing or unparseable age", f"{path}: Patient's Age {age_field!r}")
        return None
    if not findings:
        log.skip(stem, "empty findings", str(path))
        return None
    same_patient = ""
    no_report = bool(_NO_REPORT.match(findings))
    if no_report:
        if m2 := _SAME_PT.search(findings):
            same_patient = m2.group(1)
        findings = "NO REPORT"
    if not image.is_file():
        log.skip(stem, "image file missing", f"{image} (referenced by {path.name})")
        return None
    sex, age = SEX[sex_code.upper()], int(age_m.group(1))
    return Candidate(
        source_id=stem,
        image=str(image),
        text=build_prompt(age, sex, findings),
        labels={"tb": int(m.group(2)), "sex": sex, "age": age, "no_report": no_report},
        extra={"same_patient_as": same_patient or ""},  # "" not null: one column type in every split
    )


register_dataset(DatasetSpec(NAME, MontgomerySource, collect, label="Montgomery CXR", paper_size=224,
                             default_splits=lambda size: {"train": 0.8, "test": 0.2},  # no validation
                             paper_tables={224: "Table 2"}))
