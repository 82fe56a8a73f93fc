# Base model: pre-train the embedded miniature Stable Diffusion (only when base_model.name: tiny).


rule pretrain_base:
    input:
        natural=f"{DATA}/synthetic/natural",
        reports=SYNTHETIC_RAW,
    output:
        directory(f"{MODELS}/tiny-sd"),
    params:
        params=PARAMS_ARGS,
        depends=job_hash("pretrain_base"),
    log:
        f"{LOGS}/pretrain_base.log",
    benchmark:
        f"{LOGS}/benchmarks/pretrain_base.tsv",
    threads: P.base_model.tiny.threads or 2  # scheduling only: pre-training sets its own from the params
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        ENV
    shell:
        "selora pretrain-base {params.params} --quiet --data {input.natural} "
        "--reports {input.reports} --out {output} > {log} 2>&1"
