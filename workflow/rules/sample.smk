# Sample: the test prompts' images from the run's best adapter, loaded from its exported LoRA file;
# and, once per setup, from the untouched base model (no adapter), the quality tables' reference row.
from selora.runlayout import NO_ADAPTER

NO_ADAPTER_RUN = f"{RESULTS}/runs/{{setup}}/{NO_ADAPTER}/default/seed0"  # runlayout.no_adapter_run


rule sample:
    input:
        data=f"{DATA}/prepared/{{setup}}",
        base=base_model_input(),
        adapter=f"{RUN}/train/adapter",
        summary=f"{RUN}/train/summary.json",
    output:
        directory(f"{RUN}/samples"),
    params:
        params=PARAMS_ARGS,
        depends=job_hash("sample"),
    log:
        f"{LOGS}/sample/{{setup}}/{{method}}/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{LOGS}/benchmarks/sample/{{setup}}/{{method}}/{{variant}}/seed{{seed}}.tsv",
    threads: TRAIN_THREADS
    resources:
        gpu=GPU,
        mem_mb=4000,
        runtime=120,
    conda:
        ENV
    shell:
        "selora sample {params.params} --setup {wildcards.setup} --method {wildcards.method} "
        "--variant {wildcards.variant} --seed {wildcards.seed} --set train.threads={threads} "
        "--quiet > {log} 2>&1"


rule sample_no_adapter:
    input:
        data=f"{DATA}/prepared/{{setup}}",
        base=base_model_input(),
    output:
        directory(f"{NO_ADAPTER_RUN}/samples"),
    params:
        params=PARAMS_ARGS,
        depends=job_hash("sample_no_adapter"),
    log:
        f"{LOGS}/sample/{{setup}}/{NO_ADAPTER}/default/seed0.log",
    benchmark:
        f"{LOGS}/benchmarks/sample/{{setup}}/{NO_ADAPTER}/default/seed0.tsv",
    threads: TRAIN_THREADS
    resources:
        gpu=GPU,
        mem_mb=4000,
        runtime=120,
    conda:
        ENV
    shell:
        "selora sample {params.params} --setup {wildcards.setup} --method none --seed 0 "
        "--set train.threads={threads} --quiet > {log} 2>&1"
