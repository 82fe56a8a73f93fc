"""One registry per kind (methods, data sets) is the single source of their names: the schema's
sections, the Snakemake wildcards, the DVC grid and the report's labels derive from it, so a fifth
method and a fourth data set from files under tests/ run through the whole pipeline."""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from selora.adapters import method_specs
from selora.config import load_params
from selora.data.registry import dataset_specs
from selora.errors import ConfigError
from selora.schemagen import SCHEMA_PATH, current_schema_text, main

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent

# Where a registered name may still be written outside its own module, and why.
ALLOWED = {
    ("src/selora/adapters/export.py", "lora"): "the Hugging Face tag of the LoRA file format",
    ("src/selora/report/tables.py", "lora"): "the paper's claim: SeLoRA's training time against LoRA's",
    ("src/selora/paramspec.py", "synthetic-cxr"): "the default setup: the embedded data set at 32 px",
}


def _string_constants(path: Path) -> list[tuple[int, str]]:
    """Every string literal of a module that is not a docstring (prose may name anything)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_names_are_written_only_where_they_are_registered():
    """Outside tests, a method or data-set name is a string only in the module that registers it
    (the schema's copy is rendered from it, checked below); "selora" is the package's name too."""
    home = {m.name: Path(inspect.getfile(m.adapter)) for m in method_specs() if m.name != "selora"}
    home |= {d.name: Path(inspect.getfile(d.collect)) for d in dataset_specs()}
    builtin = {"lora", "adalora", "dylora", "iu-xray", "montgomery", "patchgastric", "synthetic-cxr"}
    assert builtin <= set(home)
    word = {n: re.compile(rf"(?<![\w-]){re.escape(n)}(?![\w-])") for n in home}
    found = []
    for path in [*(ROOT / "src").rglob("*.py"), *(ROOT / "workflow").rglob("*.smk"), ROOT / "Snakefile"]:
        rel = str(path.relative_to(ROOT))
        if path.suffix == ".py":
            strings = _string_constants(path)
        else:  # Snakemake files: code lines without comments
            strings = [(i, line.split("#")[0]) for i, line in enumerate(path.read_text().splitlines(), 1)]
        found += [(rel, i, n) for i, text in strings for n, w in word.items()
                  if w.search(text) and path.resolve() != home[n].resolve() and (rel, n) not in ALLOWED]
    assert found == []


def test_committed_schema_is_rendered_from_the_registries(monkeypatch):
    monkeypatch.delenv("SELORA_PLUGINS", raising=False)
    assert current_schema_text() == SCHEMA_PATH.read_text(encoding="utf-8")
    assert main(["--check"]) == 0
    schema = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    methods = schema["properties"]["methods"]["properties"]
    assert list(methods) == [m.name for m in method_specs()] == ["lora", "adalora", "dylora", "selora"]
    assert methods["selora"]["properties"]["threshold"] == {
        "type": "number", "minimum": 1, "default": 1.1, "description": "λ: expand when FI_exp / FI_orig ≥ λ."}
    assert set(schema["properties"]["datasets"]["properties"]) == {d.name for d in dataset_specs()}


def test_sections_are_the_registered_classes():
    p = load_params(None)
    for m in method_specs():
        assert type(p.methods[m.name]) is m.config
    for d in dataset_specs():
        assert type(p.datasets.get(d.name)) is d.source
    assert p.methods.selora is p.methods["selora"] and p.datasets.iu_xray is p.datasets["iu-xray"]


# ----------------------------------------------------------------------------- the toy plugins
def _toy_raw(root: Path, n: int = 30) -> Path:
    """Dark and light squares with captions saying which: a labelled set the reference net can read."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["file,text,shade"]
    for i in range(n):
        shade = ("dark", "light")[i % 2]
        level = 50 if shade == "dark" else 200
        pixels = np.clip(level + rng.normal(0, 10, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"img{i:02d}.png")
        rows.append(f"img{i:02d}.png,a {shade} square,{shade}")
    (root / "captions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def _toy_params(tmp: Path, tiny: Path) -> Path:
    data = load_params(ROOT / "params.yaml").raw
    data["paths"] = {"data": str(tmp / "data"), "models": str(tiny.parent), "results": str(tmp / "results")}
    data["datasets"]["toy-shades"] = {"raw": str(_toy_raw(tmp / "raw"))}
    data["evaluate"]["natural_reference"] = None  # no natural scenes in this tree: no domain probe
    data["setups"] = {"toy-shades-32": {"dataset": "toy-shades", "size": 32, "batch_size": 4, "epochs": 1,
                                        "max_steps": 3, "splits": {"train": 0.6, "validation": 0.2,
                                                                   "test": 0.2}}}
    data["methods"]["toylora"] = {"rank": 2}
    data["train"].update(checkpoint_every=2, memory_every=2)
    data["sample"].update(steps=2)
    data["evaluate"].update(reference_steps=30, min_finding_accuracy=0.0, kid_subset_size=3, kid_subsets=2)
    data["experiment"] = {"setups": ["toy-shades-32"], "methods": ["toylora"], "seeds": [0],
                          "ablation": {"setups": [], "seeds": [0], "threshold": [], "test_interval": []},
                          "no_adapter": False, "statistics": {"bootstrap_resamples": 0}}
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_fifth_method_and_a_fourth_data_set_from_tests_run_through_the_pipeline(tmp_path, tiny_base):
    """tests/toy_method.py and tests/toy_dataset.py register themselves (SELORA_PLUGINS); with no
    other file touched, Snakemake's DAG (schema, wildcards) and dvc.yaml hold their jobs, and
    prepare, train, sample, evaluate and the report run them."""
    env = {**os.environ, "SELORA_PLUGINS": os.pathsep.join([str(TESTS / "toy_method.py"),
                                                            str(TESTS / "toy_dataset.py")]),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    params = _toy_params(tmp_path, Path(tiny_base["path"]))
    run_dir = tmp_path / "results" / "runs" / "toy-shades-32" / "toylora" / "default" / "seed0"

    def selora(*args: str) -> subprocess.CompletedProcess:
        res = subprocess.run([str(BIN / "selora"), *args], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=900)
        assert res.returncode == 0, (args, res.stdout[-2000:], res.stderr[-3000:])
        return res

    without = subprocess.run([str(BIN / "selora"), "prepare", "--params", str(params), "--setup",
                              "toy-shades-32", "--out", str(tmp_path / "x")], cwd=tmp_path,
                             env={**env, "SELORA_PLUGINS": ""}, capture_output=True, text=True)
    assert without.returncode == 2 and "toy-shades" in without.stderr  # unknown without the plugins

    selora("dvc-yaml", "--snakefile", str(ROOT / "Snakefile"))  # reads ./params.yaml
    stages = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]
    assert {"prepare-toy-shades-32", "train-toy-shades-32-toylora-default-seed0",
            "evaluate-toy-shades-32-toylora-default-seed0"} <= set(stages)

    p = ["--params", str(params)]
    data = tmp_path / "data" / "prepared" / "toy-shades-32"
    selora("prepare", *p, "--setup", "toy-shades-32", "--out", str(data), "--quiet")
    assert json.loads((data / "data_report.json").read_text())["counts"] == {"train": 18, "validation": 6,
                                                                            "test": 6}
    run = ["--setup", "toy-shades-32", "--method", "toylora", "--variant", "default", "--seed", "0"]
    selora("train", *p, *run, "--quiet")
    summary = json.loads((run_dir / "train" / "summary.json").read_text())
    assert summary["run_config"]["method"] == {"rank": 2, "alpha": 2}  # its section, schema defaults
    selora("sample", *p, *run, "--quiet")
    reference = tmp_path / "results" / "reference" / "toy-shades-32"
    selora("evaluate", *p, "--setup", "toy-shades-32", "--fit-reference", "--out", str(reference), "--quiet")
    selora("evaluate", *p, "--run-dir", str(run_dir), "--reference", str(reference), "--quiet")
    assert "fid" in json.loads((run_dir / "metrics.json").read_text())
    selora("report", *p, "--results", str(tmp_path / "results"), "--strict", "--quiet")
    quality = (tmp_path / "results" / "tables" / "quality_toy-shades-32.md").read_text()
    assert "| ToyLoRA" in quality and "All configured runs are present." in quality


@pytest.mark.parametrize("bad", ["methods.toylora.rank=1", "experiment.methods=[toylora]"])
def test_without_the_plugins_their_names_are_unknown(bad, monkeypatch):
    monkeypatch.delenv("SELORA_PLUGINS", raising=False)
    with pytest.raises(Exception, match="toylora"):
        load_params(ROOT / "params.yaml", [bad])


def test_every_declared_bound_binds_params_files_and_adapters_built_directly():
    """Each rule is declared once, on the method's params class: a value just outside any declared
    bound is refused at the same key by the params schema (a params file) and by the adapter built
    directly from the class (tests, benchmarks, a notebook)."""
    from selora.adapters import create_adapter
    from selora.sections import section_schema

    outside = {"minimum": -1, "exclusiveMinimum": 0, "maximum": 1, "exclusiveMaximum": 0}
    checked = 0
    for spec in method_specs():
        props = section_schema(spec.config)["properties"]
        defaults = {k: v["default"] for k, v in props.items()}
        for field, rule in props.items():
            for bound, step in outside.items():
                if bound not in rule:
                    continue
                bad = rule[bound] + step
                key = f"methods.{spec.name}.{field}"
                with pytest.raises(ConfigError, match=re.escape(key)):
                    load_params(None, [f"{key}={bad}"])
                with pytest.raises(ConfigError, match=re.escape(key)):
                    create_adapter(spec.name, spec.config(**{**defaults, field: bad}), seed=0)
                checked += 1
    assert checked >= 15  # every method has bounded fields; a declaration lost its bounds otherwise


def test_the_proposed_method_is_declared_once_by_its_registration(monkeypatch):
    """Which method the tables compare everything with and whose λ / t the ablations vary is the
    registration's ``proposed=True`` (SeLoRA's), not a name spelled in the report or the run grid."""
    from selora.adapters import base
    from selora.runlayout import grid

    assert base.proposed_method() == "selora"
    p = load_params(ROOT / "params.yaml")
    assert {r.method for r in grid(p) if r.variant != "default"} == {"selora"}
    twin = base.MethodSpec("twin", base._REGISTRY["lora"].adapter, base._REGISTRY["lora"].config, "Twin", 9,
                           proposed=True)
    monkeypatch.setitem(base._REGISTRY, "twin", twin)
    with pytest.raises(ConfigError, match="exactly one method"):
        base.proposed_method()
