# Second stage: encode every dataset to code grids with its VQGAN, then train a class-conditional GPT on them.


rule encode:
    input:
        model=rules.train_vqgan.output.model,
        train="results/data/{ds}/train",
        val="results/data/{ds}/val",
    output:
        train="results/codes/{ds}/train.npy",
        val="results/codes/{ds}/val.npy",
        train_labels="results/codes/{ds}/train_labels.npy",
        val_labels="results/codes/{ds}/val_labels.npy",
        meta="results/codes/{ds}/codes.json",
    log:
        "logs/encode/{ds}.log",
    benchmark:
        "benchmarks/encode/{ds}.tsv"
    params:
        model=lambda w: f"results/vqgan/{w.ds}",
        data=lambda w: f"results/data/{w.ds}",
        out=lambda w: f"results/codes/{w.ds}",
    shell:
        "python -m vqgan.encode --model {params.model:q} --data {params.data:q} --out {params.out:q} > {log:q} 2>&1"


rule train_transformer:
    input:
        rules.encode.output,
    output:
        model="results/transformer/{ds}/model.safetensors",
        config="results/transformer/{ds}/config.json",
        metrics="results/transformer/{ds}/metrics.csv",
        summary="results/transformer/{ds}/train.json",
        codes="results/transformer/{ds}/codes.json",
    log:
        "logs/train_transformer/{ds}.log",
    benchmark:
        "benchmarks/train_transformer/{ds}.tsv"
    # One math thread per job by default: on a shared 2-core machine two 1-thread jobs side by side trained
    # faster than one 2-thread job (threads stall on each other when descheduled). Raise with --set-threads.
    threads: 1
    resources:
        gpu=0,  # accelerator processes (0 or 1: one process); profiles set it, e.g. profiles/slurm
    params:
        cfg=lambda w: section_json(w.ds, "transformer"),
        codes=lambda w: f"results/codes/{w.ds}",
        out=lambda w: f"results/transformer/{w.ds}",
        state=lambda w: f"results/transformer/{w.ds}/state",  # outside the outputs: survives reruns, resumes
    shell:
        "OMP_NUM_THREADS={threads} python -m vqgan.train.launch --num-processes {resources.gpu} -- -m vqgan.train.transformer"
        " --config {params.cfg:q} --codes {params.codes:q} --out {params.out:q} --state-dir {params.state:q}"
        " > {log:q} 2>&1"
