# Data: the embedded synthetic sets (and, with the datasets issue, the prepared setups).


rule make_synthetic:
    output:
        natural=directory(f"{DATA}/synthetic/natural"),
        cxr=directory(SYNTHETIC_RAW),
    params:
        params=PARAMS_ARGS,
        depends=job_hash("make_synthetic"),
    log:
        f"{LOGS}/make_synthetic.log",
    benchmark:
        f"{LOGS}/benchmarks/make_synthetic.tsv",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    shell:
        "selora make-synthetic {params.params} --quiet "
        "--natural-out {output.natural} --cxr-out {output.cxr} > {log} 2>&1"


rule prepare:
    input:
        raw=raw_input,
        base=base_model_input(),
    output:
        directory(f"{DATA}/prepared/{{setup}}"),
    params:
        params=PARAMS_ARGS,
        depends=job_hash("prepare"),
    log:
        f"{LOGS}/prepare/{{setup}}.log",
    benchmark:
        f"{LOGS}/benchmarks/prepare/{{setup}}.tsv",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        ENV
    shell:
        "selora prepare {params.params} --setup {wildcards.setup} --out {output} --quiet > {log} 2>&1"
