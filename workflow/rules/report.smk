# Report: every table (results/tables/*.md, and *.html for `snakemake --report`) and figure
# (results/figures/*.png) from all runs, the no-adapter runs and the references the bootstrap uses.
# Both outputs are flagged with report(): `snakemake --report results/report.html` collects them,
# with the captions of workflow/report/ (one per table and figure, picked by file name).
from selora.runlayout import no_adapter_runs

NO_ADAPTER_RUNS = [f"{RESULTS}/runs/{r.relpath}" for r in no_adapter_runs(P)]


report: "../report/workflow.rst"


rule report:
    input:
        metrics=run_paths("metrics.json") + [f"{r}/metrics.json" for r in NO_ADAPTER_RUNS],
        features=run_paths("features.safetensors") + [f"{r}/features.safetensors" for r in NO_ADAPTER_RUNS],
        summaries=run_paths("train/summary.json"),
        references=expand(f"{RESULTS}/reference/{{setup}}", setup=P.experiment.setups),
        base=[f"{MODELS}/tiny-sd"] if P.base_model.name == "tiny" else [],  # its caption probe, in the headers
    output:
        tables=report(
            directory(f"{RESULTS}/tables"),
            patterns=["{name}.html"],
            caption="../report/tables.rst",
            category="Tables",
        ),
        figures=report(
            directory(f"{RESULTS}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    params:
        params=PARAMS_ARGS,
        depends=job_hash("report"),
        results=lambda wildcards, output: str(Path(output.tables).parent),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{LOGS}/benchmarks/report.tsv",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "selora report {params.params} --results {params.results} --strict --quiet > {log} 2>&1"
