"""params.yaml validation: defaults, unknown keys, types, cross-field rules, overrides."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from selora.config import ConfigError, load_params, params_from_dict

ROOT = Path(__file__).resolve().parents[1]


def test_paper_params_and_schema_defaults_follow_the_paper():
    # Paper Table 4 / Section 3.5: the schema's defaults and the paper-scale params file.
    for p in (load_params(None), load_params([ROOT / "params.yaml", ROOT / "params-paper.yaml"])):
        assert p.train.lr == 1e-4 and p.train.weight_decay == 0.0 and p.train.betas == [0.9, 0.999]
        assert p.methods.selora.threshold == 1.1 and p.methods.selora.test_interval == 40
        assert p.methods.lora.rank == 4 and p.methods.dylora.rank == 4
        assert (p.methods.adalora.init_rank, p.methods.adalora.target_rank) == (6, 4)
        assert p.raw["methods"]["selora"]["threshold"] == 1.1  # resolved config kept for provenance
    paper = load_params([ROOT / "params.yaml", ROOT / "params-paper.yaml"])
    assert paper.base_model.name == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert {n: (s.size, s.batch_size, s.epochs) for n, s in paper.setups.items()
            if n in paper.experiment.setups} == {
        "iu-xray-224": (224, 8, 10), "montgomery-224": (224, 8, 100),
        "iu-xray-384": (384, 6, 10), "patchgastric-384": (384, 6, 10)}
    assert paper.setup("montgomery-224").splits.as_dict() == {"train": 0.8, "test": 0.2}
    assert paper.setup("iu-xray-224").splits.as_dict() == {"train": 0.8, "validation": 0.16, "test": 0.04}


def test_shipped_params_spell_out_every_key():
    """DVC interpolates and tracks keys of params.yaml itself, so nothing may be left to defaults."""
    from selora.config import read_params_file

    raw = read_params_file(ROOT / "params.yaml")
    assert load_params(ROOT / "params.yaml").raw == raw


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("methods.selora.threshold=abc", "methods.selora.threshold"),
        ("methods.selora.threshold=0.9", "methods.selora.threshold"),
        ("methods.selora.test_interval=0", "methods.selora.test_interval"),
        ("methods.selora.max_rank=0", "methods.selora.max_rank"),
        ("methods.lora.rank=0", "methods.lora.rank"),
        ("methods.adalora.target_rank=8", "methods.adalora.target_rank"),
        ("experiment.methods=[lora,bogus]", "experiment.methods"),
        ("train.mixed_precision=fp8", "train.mixed_precision"),
        ("base_model.tiny.image_size=30", "base_model.tiny.image_size"),
        ("setups.synthetic-cxr-32.splits.test=0.5", "setups.synthetic-cxr-32.splits"),
    ],
)
def test_bad_values_fail_naming_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_params(None, [override])
    assert needle in str(err.value)


def test_unknown_keys_are_rejected_at_every_level():
    for data in ({"bogus": 1}, {"train": {"learning_rate": 1}}, {"methods": {"selora": {"lam": 1.1}}}):
        with pytest.raises(ConfigError, match=r"(bogus|learning_rate|lam)"):
            params_from_dict(data)


def test_setup_of_a_dataset_without_raw_folder_fails_before_any_job():
    data = {
        "setups": {"iu-xray-224": {"dataset": "iu-xray", "size": 224, "batch_size": 8, "epochs": 10,
                                   "splits": {"train": 0.8, "validation": 0.16, "test": 0.04}}},
        "experiment": {"setups": ["iu-xray-224"], "ablation": {"setups": ["iu-xray-224"]}},
    }
    with pytest.raises(ConfigError, match=r"datasets\.iu-xray\.raw"):
        params_from_dict(data)
    data["datasets"] = {"iu-xray": {"raw": "/data/iu"}}
    assert params_from_dict(data).setup("iu-xray-224").size == 224


def test_overrides_parse_yaml_values_and_reject_malformed(tmp_path):
    p = load_params(None, ["methods.selora.threshold=1.3", "experiment.seeds=[7, 8]",
                           "experiment.ablation.seeds=[7]"])
    assert p.methods.selora.threshold == 1.3 and p.experiment.seeds == [7, 8]
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_params(None, ["methods.selora.threshold"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_params(tmp_path / "missing.yaml")


SCHEMA_VIOLATIONS = ["methods.selora.threshold=abc", "methods.selora.threshold=0.9", "methods.lora.rank=0",
                     "train.mixed_precision=fp8", "experiment.methods=[lora,bogus]"]


def test_snakemake_validates_against_the_schema_the_package_loads():
    """The Snakefile's `validate()` must read the very file selora.config loads (a symlink, not a
    copy that could drift): then both fill the same defaults and reject a bad value at the same key."""

    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    from selora.config import apply_overrides, validate_raw
    from selora.schemagen import SCHEMA_PATH, current_schema_text, snakemake_schema

    used = re.search(r"^validate\(config, snakemake_schema\(\)\)$", (ROOT / "Snakefile").read_text(), re.M)
    assert used, "the Snakefile no longer validates its config with snakemake.utils.validate"
    wf = ROOT / snakemake_schema()  # without plugins: the committed file, through the workflow's symlink
    assert wf.is_symlink() and wf.resolve() == SCHEMA_PATH.resolve(), (wf, SCHEMA_PATH)
    assert current_schema_text() == SCHEMA_PATH.read_text(encoding="utf-8")  # what selora.config reads
    filled: dict = {}
    validate(filled, str(wf))  # Snakemake fills the schema's defaults in place
    assert filled == validate_raw({}) and filled["methods"]["selora"]["threshold"] == 1.1
    for override in SCHEMA_VIOLATIONS:
        key = override.split("=", 1)[0]
        bad = apply_overrides(yaml.safe_load((ROOT / "params.yaml").read_text()), [override])
        with pytest.raises(ConfigError, match=re.escape(key)):
            validate_raw(bad)
        with pytest.raises(WorkflowError) as err:
            validate(bad, str(wf))
        where = "".join(f"[{p!r}]" for p in key.split("."))
        assert f"On instance{where}" in str(err.value), (override, str(err.value)[-500:])


def _bounded_leaves(schema: dict, key: str = ""):
    """(key, bound keyword, bound, is-a-list) of every declared numeric bound in the params schema."""
    props = dict(schema.get("properties", {}))
    if isinstance(schema.get("additionalProperties"), dict):  # setups.<name>
        props["synthetic-cxr-32"] = schema["additionalProperties"]
    for name, sub in props.items():
        where = f"{key}.{name}".lstrip(".")
        if "properties" in sub or isinstance(sub.get("additionalProperties"), dict):
            yield from _bounded_leaves(sub, where)
            continue
        for rules, is_list in ((sub, False), (sub.get("items", {}), True)):
            for bound in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
                if bound in rules:
                    yield where, bound, rules[bound], is_list


def test_every_declared_bound_is_enforced_at_its_key():
    """Config is declared once (selora/paramspec.py and the registered classes) and the schema is
    rendered from it: a value just outside any declared bound, anywhere in the params, is refused
    naming its key — so no bound is only documented, and none needs a second, hand-written check."""
    from selora.config import load_schema

    outside = {"minimum": -1, "exclusiveMinimum": 0, "maximum": 1, "exclusiveMaximum": 0}
    leaves = list(_bounded_leaves(load_schema()))
    for key, bound, limit, is_list in leaves:
        bad = limit + outside[bound]
        with pytest.raises(ConfigError, match=re.escape(key)):
            load_params(ROOT / "params.yaml", [f"{key}={[bad] if is_list else bad}"])
    sections = {key.split(".")[0] for key, *_ in leaves}
    assert {"base_model", "synthetic", "setups", "methods", "train", "sample", "evaluate",
            "experiment"} <= sections, sections


def test_cross_field_rules_live_on_their_section():
    """A rule between keys is its section's check(), run for a params file and for a section built
    directly alike (check_section), at the key where the section sits."""
    from selora.paramspec import Splits
    from selora.sections import check_section

    with pytest.raises(ConfigError, match=r"setups\.synthetic-cxr-32\.splits: fractions sum to 0\.9"):
        load_params(ROOT / "params.yaml", ["setups.synthetic-cxr-32.splits.test=0.1"])
    with pytest.raises(ConfigError, match=r"synthetic\.cxr\.splits: fractions sum to 1\.1"):
        load_params(ROOT / "params.yaml", ["synthetic.cxr.splits.test=0.3"])
    with pytest.raises(ConfigError, match=r"my\.splits: fractions sum to 0\.7"):
        check_section(Splits(train=0.5, validation=0.1, test=0.1), "my.splits")
    check_section(Splits(train=0.5, validation=0.25, test=0.25), "my.splits")
    with pytest.raises(ConfigError, match=r"base_model\.tiny\.image_size: 34 is not a multiple"):
        load_params(ROOT / "params.yaml", ["base_model.tiny.image_size=34"])


@pytest.mark.parametrize("override, message", [
    ("synthetic.cxr.findings.lung={none: 1.0}", r"synthetic\.cxr\.findings: unknown finding 'lung'"),
    ("synthetic.cxr.findings.heart.big=0.5", r"synthetic\.cxr\.findings\.heart: unknown value\(s\) 'big'"),
    ("synthetic.cxr.findings.device.none=0.9",
     r"synthetic\.cxr\.findings\.device: probabilities .* sum to 1"),
])
def test_a_bad_findings_param_names_the_finding_and_the_known_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_params(ROOT / "params.yaml", [override])
