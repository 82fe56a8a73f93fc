"""`selora prepare` on the real IU X-Ray reports (NLM XMLs and view tables from the torchxrayvision
wheel, placeholder images) with SD 1.5's tokenizer built from CLIP's merges: the prompt-length
statistics the paper path reports, and every report accounted for. Skips without a package index."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from selora.cli import main
from selora.imagefolder import read_manifest

ROOT = Path(__file__).resolve().parents[1]
N_REPORTS, N_IMAGES = 3955, 7470  # the NLM distribution


def test_real_reports_with_the_paper_params_give_sd15_prompt_lengths(tmp_path, monkeypatch, capsys,
                                                                     nlm_tree, clip_tokenizer_dir):
    # params-paper.yaml as written (raw folder and view table under data/raw/iu-xray/), run from a
    # folder holding that tree; only the size (placeholders are tiny) and the tokenizer differ.
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "iu-xray").symlink_to(nlm_tree["raw"])
    monkeypatch.chdir(tmp_path)
    code = main(["prepare", "--params", str(ROOT / "params-paper.yaml"), "--setup", "iu-xray-384",
                 "--size", "16", "--tokenizer", str(clip_tokenizer_dir), "--out", "out", "--quiet"])
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads(Path("out/data_report.json").read_text())
    rows = read_manifest(Path("out"))
    assert report["config"]["views"] == "data/raw/iu-xray/nlmcxr_tsne_pa.csv.gz"
    assert report["warnings"] == [] and "warning" not in out.err

    # Every report is either kept (one image) or one skip entry; no id twice.
    kept = {r["source_id"] for r in rows}
    dropped = [s["source"] for s in report["skipped"]]
    assert len(kept) == report["total"] > 3000
    assert len(dropped) == len(set(dropped)) and not kept & set(dropped)
    assert report["total"] + len(dropped) == N_REPORTS
    assert set(report["skip_counts"]) <= {"no frontal image", "report has no image",
                                          "empty findings and impression"}
    # Every referenced image is the kept one, inside a skip entry, or counted by reason.
    in_skips = sum(len(s["images"]) for s in report["skipped"])
    assert report["total"] + in_skips + sum(report["excluded"].values()) == N_IMAGES

    # Prompt lengths in SD 1.5 tokens, with the share over the 77-token context.
    tok = report["prompt_tokens"]["all"]
    assert report["tokenizer"]["max_length"] == 77 and tok["n"] == report["total"]
    assert tok["over_limit"] == sum(r["n_tokens"] > 77 for r in rows) > 0
    assert 20 < tok["median"] < 77 < tok["max"] and tok["p95"] > tok["median"]
    assert f"{tok['over_limit']} over 77" in out.out
    assert Counter(r["labels"]["text_source"] for r in rows)["findings"] > 0.8 * report["total"]
