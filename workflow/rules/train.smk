# Train: one adapter per (setup, method, variant, seed). The checkpoint folder is deliberately not
# an output, so a preempted or failed job that is retried resumes from it instead of restarting.


rule train:
    input:
        data=f"{DATA}/prepared/{{setup}}",
        base=base_model_input(),
    output:
        summary=f"{RUN}/train/summary.json",
        adapter=directory(f"{RUN}/train/adapter"),
        logs=directory(f"{RUN}/train/logs"),
    params:
        params=PARAMS_ARGS,
        depends=job_hash("train"),
    log:
        f"{LOGS}/train/{{setup}}/{{method}}/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{LOGS}/benchmarks/train/{{setup}}/{{method}}/{{variant}}/seed{{seed}}.tsv",
    threads: TRAIN_THREADS
    resources:
        gpu=GPU,
        mem_mb=4000,
        runtime=600,
    conda:
        ENV
    shell:
        "selora train {params.params} --setup {wildcards.setup} --method {wildcards.method} "
        "--variant {wildcards.variant} --seed {wildcards.seed} --set train.threads={threads} "
        "--quiet > {log} 2>&1"
