# The pipeline, from raw data to results/tables/*.md. One entry point: this file includes one rule
# file per phase from workflow/rules/; every rule calls one `selora` subcommand of the installed
# package. params.yaml is the config, validated (with defaults) against workflow/schemas/.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "params.yaml"


# `--config section='{key: value}'` reaches every job: Snakemake reads nested values as text, so they
# are re-read as `selora --set KEY=VALUE` reads them, applied here and handed to every `selora` call
# (common.smk), and so enter the rerun hashes too.
from selora.config import apply_overrides, validate_raw
from selora.dag import config_overrides
from selora.schemagen import snakemake_schema

OVERRIDES = config_overrides(workflow.config_settings.config)  # --config only, not --configfile
config.update(apply_overrides(config, OVERRIDES))
# The package's validation first: one-line errors naming the key (`methods.selora.threshold: ...`),
# and the config filled exactly as every `selora` call fills it.
config.update(validate_raw(config))


# The committed schema, or, with plugin methods or data sets (SELORA_PLUGINS), the same file
# rendered with them.
validate(config, snakemake_schema())


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/base_model.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        final_targets(),
    default_target: True
