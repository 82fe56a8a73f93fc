# Report: every table (results/tables/*.md) and figure (results/figures/*.png) from all runs.


rule report:
    input:
        metrics=run_paths("metrics.json"),
        summaries=run_paths("train/summary.json"),
    output:
        tables=directory(f"{RESULTS}/tables"),
        figures=directory(f"{RESULTS}/figures"),
    params:
        params=PARAMS_ARGS,
        depends=job_hash("report"),
        results=lambda wildcards, output: str(Path(output.tables).parent),
    log:
        f"{LOGS}/report.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "selora report {params.params} --results {params.results} --strict --quiet > {log} 2>&1"
