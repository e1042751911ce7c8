# Second stage: encode every dataset to code grids with its VQGAN, then train a class-conditional GPT on them.


rule encode:
    input:
        model=rules.train_vqgan.output.model,
        train="results/data/{ds}/train",
        val="results/data/{ds}/val",
    output:
        train="results/codes/{ds}/{variant}/train.npy",
        val="results/codes/{ds}/{variant}/val.npy",
        train_labels="results/codes/{ds}/{variant}/train_labels.npy",
        val_labels="results/codes/{ds}/{variant}/val_labels.npy",
        meta="results/codes/{ds}/{variant}/codes.json",
    log:
        "logs/encode/{ds}/{variant}.log",
    benchmark:
        "benchmarks/encode/{ds}/{variant}.tsv"
    conda:
        ENV
    resources:
        gpu=0,  # 0: CPU, GPUs hidden; 1: the GPU when there is one (profiles/slurm sets it)
    params:
        model=lambda w: f"results/vqgan/{w.ds}/{w.variant}",
        data=lambda w: f"results/data/{w.ds}",
        out=lambda w: f"results/codes/{w.ds}/{w.variant}",
        precision=lambda w: EXPERIMENT.section(w.ds, w.variant, "vqgan")["encode"][
            "precision"
        ],
    shell:
        gpu_or_cpu(
            "python -m vqgan.encode --model {params.model:q} --data {params.data:q} --out {params.out:q}"
            " --precision {params.precision} > {log:q} 2>&1"
        )


rule train_transformer:
    input:
        rules.encode.output,
    output:
        model="results/transformer/{ds}/{variant}/model.safetensors",
        config="results/transformer/{ds}/{variant}/config.json",
        metrics="results/transformer/{ds}/{variant}/metrics.csv",
        summary="results/transformer/{ds}/{variant}/train.json",
        codes="results/transformer/{ds}/{variant}/codes.json",
    log:
        "logs/train_transformer/{ds}/{variant}.log",
    benchmark:
        "benchmarks/train_transformer/{ds}/{variant}.tsv"
    conda:
        ENV
    # One math thread per job by default: on a shared 2-core machine two 1-thread jobs side by side trained
    # faster than one 2-thread job (threads stall on each other when descheduled). Raise with --set-threads.
    # Inside a SLURM job the launcher uses the CPUs SLURM gave the job instead (cpus_per_gpu in the profile).
    threads: 1
    resources:
        gpu=0,  # processes, one per GPU (0: one CPU process, GPUs hidden); profiles set it, e.g. profiles/slurm
        nodes=1,  # machines they are spread over (> 1: a multi-node SLURM job, see README)
    params:
        cfg=lambda w: section_json(w.ds, w.variant, "transformer"),
        codes=lambda w: f"results/codes/{w.ds}/{w.variant}",
        out=lambda w: f"results/transformer/{w.ds}/{w.variant}",
        state=lambda w: f"results/transformer/{w.ds}/{w.variant}/state",  # outside the outputs: survives reruns, resumes
    shell:
        gpu_or_cpu(
            "python -m vqgan.train.launch --num-processes {resources.gpu} --nodes {resources.nodes}"
            " --threads {threads} -- -m vqgan.train.transformer"
            " --config {params.cfg:q} --codes {params.codes:q} --out {params.out:q} --state-dir {params.state:q}"
            " > {log:q} 2>&1"
        )
