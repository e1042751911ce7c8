# VQGAN stage: train with Accelerate (resumable state outside the declared outputs), then evaluate
# reconstructions on the val split (and on the dataset's external eval sets) against trivial baselines computed
# from the train split, with object recall where the data has object truth.


rule train_vqgan:
    input:
        train="results/data/{ds}/train",
        weights=perceptual_weights,
    output:
        model="results/vqgan/{ds}/{variant}/model.safetensors",
        config="results/vqgan/{ds}/{variant}/config.json",
        metrics="results/vqgan/{ds}/{variant}/metrics.csv",
        summary="results/vqgan/{ds}/{variant}/train.json",
    log:
        "logs/train_vqgan/{ds}/{variant}.log",
    benchmark:
        "benchmarks/train_vqgan/{ds}/{variant}.tsv"
    conda:
        ENV
    # Math threads: an equal share of the CPUs between two jobs, or one per GPU (vqgan.hardware.job_defaults): 1 on
    # a 2-core machine, where two 1-thread jobs side by side trained faster than one 2-thread job (threads stall on
    # each other when descheduled). --set-threads wins. Inside a SLURM job the launcher uses the CPUs SLURM gave
    # the job instead (cpus_per_gpu in the profile).
    threads: TRAIN_THREADS
    resources:
        # processes, one per GPU (0: one CPU process, GPUs hidden); 1 where GPUs were detected, else 0;
        # --set-resources train_vqgan:gpu=N (or a profile, e.g. profiles/slurm) wins
        gpu=GPU,
        nodes=1,  # machines they are spread over (> 1: a multi-node SLURM job, see README)
    params:
        cfg=lambda w: section_json(
            w.ds, w.variant, "vqgan", keys=("model", "quantizer", "loss", "train")
        ),
        out=lambda w: f"results/vqgan/{w.ds}/{w.variant}",
        # not an output: Snakemake deletes outputs before a rerun, the state must survive to resume
        state=lambda w: f"results/vqgan/{w.ds}/{w.variant}/state",
        weights=config["weights_dir"],
    shell:
        on_own_gpus(
            "python -m vqgan.train.launch --num-processes {resources.gpu} --nodes {resources.nodes}"
            " --threads {threads} -- -m vqgan.train.vqgan"
            " --config {params.cfg:q} --data {input.train:q} --out {params.out:q} --state-dir {params.state:q}"
            " --weights-dir {params.weights:q} > {log:q} 2>&1"
        )


rule eval_vqgan:
    input:
        model=rules.train_vqgan.output.model,
        val="results/data/{ds}/val",
        train="results/data/{ds}/train",
        eval_sets=eval_set_folders,  # folders of raw ALE screens (datasets.{ds}.eval_sets)
        weights=eval_lpips_weights,  # LPIPS (vqgan.eval.lpips)
    output:
        json="results/vqgan/{ds}/{variant}/recon.json",
        grid=report(
            "results/vqgan/{ds}/{variant}/recon.png",
            caption="../report/recon.rst",
            category="Reconstructions",
        ),
        recon=directory("results/vqgan/{ds}/{variant}/recon"),
        # the reconstructions of the fid stage's train images: its copy rate against reconstructions
        recon_train=directory("results/vqgan/{ds}/{variant}/recon_train"),
    log:
        "logs/eval_vqgan/{ds}/{variant}.log",
    benchmark:
        "benchmarks/eval_vqgan/{ds}/{variant}.tsv"
    conda:
        ENV
    resources:
        gpu=GPU,  # 1 where GPUs were detected (the job gets its own), else 0: the CPU, GPUs hidden
    params:
        # eval keys and the palette the reconstructions are snapped onto (vqgan.palette)
        cfg=lambda w: section_json(w.ds, w.variant, "vqgan", keys=("eval", "palette")),
        eval_sets=lambda w: eval_sets_json(w.ds),
        # fid.n alone, not the fid section: how many train images recon_train/ holds (the ones the fid stage picks),
        # so fid.n reruns this job too, the fid section's other keys do not
        fid_n=config["fid"]["n"],
        model=lambda w: f"results/vqgan/{w.ds}/{w.variant}",
        weights=config["weights_dir"],
    shell:
        on_own_gpus(
            "python -m vqgan.eval.recon --config {params.cfg:q} --model {params.model:q} --data {input.val:q}"
            " --train-data {input.train:q} --weights-dir {params.weights:q} --out-json {output.json:q}"
            " --out-png {output.grid:q} --recon-dir {output.recon:q} --recon-train-dir {output.recon_train:q}"
            " --recon-train-n {params.fid_n} --eval-sets {params.eval_sets:q} > {log:q} 2>&1"
        )
