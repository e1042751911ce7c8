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
        gpu=GPU,  # 1 where GPUs were detected (the job gets its own), else 0: the CPU, GPUs hidden
    params:
        model=lambda w: f"results/vqgan/{w.ds}/{w.variant}",
        data=lambda w: f"results/data/{w.ds}",
        out=lambda w: f"results/codes/{w.ds}/{w.variant}",
        precision=lambda w: EXPERIMENT.section(w.ds, w.variant, "vqgan")["encode"][
            "precision"
        ],
    shell:
        on_own_gpus(
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
    # Math threads: an equal share of the CPUs between two jobs, or one per GPU (vqgan.hardware.job_defaults): 1 on
    # a 2-core machine, where two 1-thread jobs side by side trained faster than one 2-thread job (threads stall on
    # each other when descheduled). --set-threads wins. Inside a SLURM job the launcher uses the CPUs SLURM gave
    # the job instead (cpus_per_gpu in the profile).
    threads: TRAIN_THREADS
    resources:
        # processes, one per GPU (0: one CPU process, GPUs hidden); 1 where GPUs were detected, else 0;
        # --set-resources train_transformer:gpu=N (or a profile, e.g. profiles/slurm) wins
        gpu=GPU,
        nodes=1,  # machines they are spread over (> 1: a multi-node SLURM job, see README)
    params:
        cfg=lambda w: section_json(w.ds, w.variant, "transformer"),
        codes=lambda w: f"results/codes/{w.ds}/{w.variant}",
        out=lambda w: f"results/transformer/{w.ds}/{w.variant}",
        state=lambda w: f"results/transformer/{w.ds}/{w.variant}/state",  # outside the outputs: survives reruns, resumes
    shell:
        on_own_gpus(
            "python -m vqgan.train.launch --num-processes {resources.gpu} --nodes {resources.nodes}"
            " --threads {threads} -- -m vqgan.train.transformer"
            " --config {params.cfg:q} --codes {params.codes:q} --out {params.out:q} --state-dir {params.state:q}"
            " > {log:q} 2>&1"
        )
