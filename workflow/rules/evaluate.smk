# Evaluate: the setup's reference (real test features; for the embedded default also the reference
# network that reads the findings and the domain probe that tells radiographs from natural scenes)
# once per setup, then every run's samples against it (and the untouched base model's, sampled by
# sample_no_adapter). Each writes metrics.json and the generated features the report bootstraps over.


rule fit_reference:
    input:
        data=f"{DATA}/prepared/{{setup}}",
        metrics=metric_input(),
        natural=natural_input(),
    output:
        directory(f"{RESULTS}/reference/{{setup}}"),
    params:
        params=PARAMS_ARGS,
        depends=job_hash("fit_reference"),
    log:
        f"{LOGS}/fit_reference/{{setup}}.log",
    benchmark:
        f"{LOGS}/benchmarks/fit_reference/{{setup}}.tsv",
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=4000,
        runtime=60,
    conda:
        ENV
    shell:
        "selora evaluate {params.params} --setup {wildcards.setup} --fit-reference "
        "--out {output} --quiet > {log} 2>&1"


rule evaluate:
    input:
        samples=f"{RUN}/samples",
        reference=f"{RESULTS}/reference/{{setup}}",
        metrics=metric_input(),
    output:
        metrics=f"{RUN}/metrics.json",
        features=f"{RUN}/features.safetensors",
    params:
        params=PARAMS_ARGS,
        depends=job_hash("evaluate"),
        run_dir=lambda wildcards, output: str(Path(output.metrics).parent),
    log:
        f"{LOGS}/evaluate/{{setup}}/{{method}}/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{LOGS}/benchmarks/evaluate/{{setup}}/{{method}}/{{variant}}/seed{{seed}}.tsv",
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=4000,
        runtime=60,
    conda:
        ENV
    shell:
        "selora evaluate {params.params} --run-dir {params.run_dir} --reference {input.reference} "
        "--quiet > {log} 2>&1"


use rule evaluate as evaluate_no_adapter with:
    input:
        samples=f"{NO_ADAPTER_RUN}/samples",
        reference=f"{RESULTS}/reference/{{setup}}",
        metrics=metric_input(),
    output:
        metrics=f"{NO_ADAPTER_RUN}/metrics.json",
        features=f"{NO_ADAPTER_RUN}/features.safetensors",
    log:
        f"{LOGS}/evaluate/{{setup}}/{NO_ADAPTER}/default/seed0.log",
    benchmark:
        f"{LOGS}/benchmarks/evaluate/{{setup}}/{NO_ADAPTER}/default/seed0.tsv",
