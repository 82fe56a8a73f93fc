"""The data report of a prepared set (``data_report.json`` + ``data_report.md``).

Counts per split, label distributions, prompt lengths in text-encoder tokens (and how many exceed
the encoder's 77-token context, i.e. are truncated in training), every skipped record with its
reason and image ids, the images not used counted by reason (records and images are never added
into one number), the notes of the parser (e.g. how IU X-Ray frontal views were found) and its
warnings, which the CLI also prints.
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from selora.imagefolder import SPLITS

MD_SKIP_LIMIT = 200  # the markdown lists this many skipped records; the JSON lists all
MIN_VOCAB = 256  # a byte-level BPE has at least its 256 byte symbols
MAX_CONTEXT = 100_000  # a text encoder's context; transformers' "no limit" placeholder is 1e30


def load_tokenizer(source: str | None) -> tuple[Any | None, str]:
    """The base model's ``CLIPTokenizer`` from a diffusers folder (``tokenizer/``), a tokenizer folder
    or a cached hub id — or None and the reason. Never downloads; a missing tokenizer is reported,
    not fatal (prompt lengths are then unavailable).

    What loads is checked, not trusted: offline, transformers returns an *empty* tokenizer for an
    uncached hub id (2 entries, ``model_max_length`` 1e30), and a folder without
    ``model_max_length`` loads with that same placeholder. Counts from either would be garbage."""
    if not source:
        return None, "no tokenizer configured"
    from transformers import CLIPTokenizer

    path = Path(source)
    sub = "tokenizer" if (path / "tokenizer").is_dir() or not path.exists() else ""
    where = source + (f" ({sub}/)" if sub else "")
    try:
        tok = CLIPTokenizer.from_pretrained(source, subfolder=sub, local_files_only=True)
    except Exception as exc:  # any loader failure (OSError, JSON, tokenizers' own errors): no counts
        return None, f"cannot load a tokenizer from {where}: {str(exc).splitlines()[0][:300]}"
    if len(tok) < MIN_VOCAB:
        return None, (f"the tokenizer loaded from {where} is empty ({len(tok)} entries; a byte-level BPE "
                      f"has at least {MIN_VOCAB}): offline, an uncached hub id loads this way; download "
                      "the base model or point --tokenizer at a tokenizer folder")
    limit = tok.model_max_length
    if not isinstance(limit, int) or not 0 < limit <= MAX_CONTEXT:
        shown = f"{limit:.3g}" if isinstance(limit, int | float) else repr(limit)
        return None, (f"the tokenizer from {where} has no usable model_max_length ({shown}; "
                      "transformers' placeholder when tokenizer_config.json has none), so the text "
                      "encoder's context is unknown")
    return tok, where


def count_tokens(tokenizer: Any, texts: list[str], batch: int = 512) -> list[int]:
    """Token count of each prompt with the begin/end tokens, before any truncation."""
    out: list[int] = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i:i + batch], truncation=False, add_special_tokens=True, verbose=False)
        out.extend(len(x) for x in enc["input_ids"])
    return out


def length_stats(values: list[int], limit: int | None) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    qs = statistics.quantiles(values, n=20, method="inclusive") if len(values) > 1 else [values[0]] * 19
    out: dict[str, Any] = {
        "n": len(values), "min": min(values), "median": statistics.median(values),
        "mean": round(statistics.fmean(values), 2), "p95": qs[18], "max": max(values),
    }
    if limit is not None:
        out["over_limit"] = sum(v > limit for v in values)
    return out


def label_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per label key: value counts (few values), min/median/max (numbers) or the number of distinct values."""
    keys = sorted({k for r in rows for k in r["labels"]})
    out: dict[str, Any] = {}
    for key in keys:
        values = [r["labels"].get(key) for r in rows]
        distinct = set(map(repr, values))
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if numeric and len(distinct) > 2:
            out[key] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
        elif len(distinct) <= 20:
            out[key] = dict(sorted(Counter(str(v) for v in values).items()))
        else:
            out[key] = {"distinct": len(distinct)}
    return out


def summarise(rows: list[dict[str, Any]], token_limit: int | None, have_tokens: bool) -> dict[str, Any]:
    by_split = {s: [r for r in rows if r["split"] == s] for s in SPLITS}
    by_split = {s: r for s, r in by_split.items() if r}
    words = {s: [len(r["text"].split()) for r in rs] for s, rs in by_split.items()}
    out: dict[str, Any] = {
        "counts": {s: len(r) for s, r in by_split.items()},
        "total": len(rows),
        "labels": {s: label_summary(rs) for s, rs in by_split.items()},
        "prompt_words": {"all": length_stats([w for ws in words.values() for w in ws], None),
                         **{s: length_stats(ws, None) for s, ws in words.items()}},
    }
    if have_tokens:
        toks = {s: [r["n_tokens"] for r in rs] for s, rs in by_split.items()}
        out["prompt_tokens"] = {"all": length_stats([t for ts in toks.values() for t in ts], token_limit),
                                **{s: length_stats(ts, token_limit) for s, ts in toks.items()}}
    return out


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return lines


def _cap_lines(cap: dict[str, Any] | None) -> list[str]:
    if not cap:
        return []
    return [f"- record cap (max_records {cap['max_records']}): {cap['used']} of {cap['parsed_records']} "
            f"parsed records used, drawn in a seeded random order; {cap['left_out']} records left out by "
            f"the cap (not listed), {cap['skipped_while_decoding']} skipped while decoding (listed below)"]


def _with_parsed(stats: dict[str, Any], report: dict[str, Any], key: str) -> list[tuple[str, Any]]:
    """Per-split rows, then every parsed record's when a record cap left most of them out."""
    rows = list(stats.items())
    parsed = report.get("record_cap", {}).get(key)
    return rows + ([("every parsed record (before the cap)", parsed)] if parsed else [])


def to_markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    splits = ", ".join(f"{k} {v:g}" for k, v in cfg["splits"].items())
    lines = [
        f"# Data report: {cfg['dataset']} ({report['layout']} layout), {cfg['size']} px",
        "",
        f"- raw data: `{cfg['raw']}`",
        f"- seed {cfg['seed']}; split fractions: {splits}",
        f"- split hash: `{report['split_hash']}`",
        f"- {report['total']} image–text pairs written, one per record",
        f"- {len(report['skipped'])} records skipped (bad input or no usable image; each listed below)",
        f"- {sum(report['excluded'].values())} further images not used (counted by reason below)",
        *_cap_lines(report.get("record_cap")),
        *[f"- **Warning**: {w}" for w in report.get("warnings", [])],
        "",
        "## Counts per split",
        "",
        *_table(["split", "images"], [[s, n] for s, n in report["counts"].items()]),
        "",
        "## Prompt lengths",
        "",
    ]
    tok = report.get("prompt_tokens")
    limit = report["tokenizer"].get("max_length")
    if tok:
        lines += [f"Text-encoder tokens (with begin/end tokens; tokenizer: {report['tokenizer']['source']}). "
                  + (f"Prompts over {limit} tokens are truncated by the text encoder." if limit else
                     "The text encoder's context is unknown."), ""]
        over = [f"> {limit}"] if limit else []
        lines += _table(["split", "n", "min", "median", "mean", "p95", "max", *over],
                        [[s, v["n"], v["min"], v["median"], v["mean"], v["p95"], v["max"],
                          *([v["over_limit"]] if limit else [])]
                         for s, v in _with_parsed(tok, report, "prompt_tokens") if v["n"]])
    else:
        lines += [f"Token counts unavailable: {report['tokenizer']['note']}. Words per prompt instead:", ""]
        lines += _table(["split", "n", "min", "median", "mean", "p95", "max"],
                        [[s, v["n"], v["min"], v["median"], v["mean"], v["p95"], v["max"]]
                         for s, v in _with_parsed(report["prompt_words"], report, "prompt_words") if v["n"]])
    lines += ["", "## Labels per split", ""]
    for split, labels in report["labels"].items():
        parts = [f"{k}: " + ", ".join(f"{a}={b}" for a, b in v.items()) for k, v in labels.items()]
        lines.append(f"- **{split}**: " + ("; ".join(parts) or "none"))
    if report["notes"]:
        lines += ["", "## Notes", "", *[f"- {n}" for n in report["notes"]]]
    lines += ["", "## Further images not used (counted)", ""]
    lines += _table(["reason", "images"], [[k, v] for k, v in report["excluded"].items()]) \
        if report["excluded"] else ["none"]
    lines += ["", f"## Skipped records ({len(report['skipped'])})", ""]
    if report["skipped"]:
        lines += [*_table(["reason", "records"], [[k, v] for k, v in report["skip_counts"].items()]), ""]
        shown = report["skipped"][:MD_SKIP_LIMIT]
        rows = [[s["source"], s["reason"], ", ".join(s.get("images", [])), s["detail"]] for s in shown]
        lines += _table(["record", "reason", "images", "detail"], rows)
        if len(report["skipped"]) > MD_SKIP_LIMIT:
            lines += ["", f"... and {len(report['skipped']) - MD_SKIP_LIMIT} more: see data_report.json"]
    else:
        lines.append("none")
    return "\n".join(lines) + "\n"
