# Scoring: clean-fid FID/KID of samples (every seed of sample.seeds) and of VQGAN reconstructions (rFID) against the
# real val split, and the table that compares every dataset and variant.


rule fid:
    input:
        real="results/data/{ds}/val",
        train="results/data/{ds}/train",
        gen=sample_folders,
        recon=rules.eval_vqgan.output.recon,
        recon_train=rules.eval_vqgan.output.recon_train,
    output:
        "results/fid/{ds}/{variant}.json",
    log:
        "logs/fid/{ds}/{variant}.log",
    benchmark:
        "benchmarks/fid/{ds}/{variant}.tsv"
    conda:
        ENV
    threads: 4  # capped at --cores by Snakemake
    resources:
        gpu=GPU,  # 1 where GPUs were detected (the job gets its own), else 0: the CPU, GPUs hidden
    params:
        cfg=json.dumps(config["fid"], sort_keys=True),
        weights=config["weights_dir"],
        # PNG decoding and the resize to 299 px in its threads' processes on a GPU, where they are the bottleneck;
        # on the CPU the Inception math uses the same cores, so they stay in the main process
        workers=lambda w, threads, resources: threads if resources.gpu else 0,
    shell:
        on_own_gpus(
            "python -m vqgan.eval.fid --config {params.cfg:q} --real {input.real:q} --gen {input.gen:q}"
            " --recon {input.recon:q} --train {input.train:q} --recon-train {input.recon_train:q}"
            " --name {wildcards.ds:q} --cache-dir results/fid/cache"
            " --weights-dir {params.weights:q} --workers {params.workers} --out {output:q} > {log:q} 2>&1"
        )


rule fid_table:
    input:
        fid=per_run("results/fid/{ds}/{variant}.json"),
        recon=per_run("results/vqgan/{ds}/{variant}/recon.json"),
        vqgan=per_run("results/vqgan/{ds}/{variant}/train.json"),
        transformer=per_run("results/transformer/{ds}/{variant}/train.json"),
        # the data manifests: a dataset smaller than configured gets a note
        data=expand("results/data/{ds}/{split}", ds=DATASETS, split=["train", "val"]),
    output:
        csv=report(
            "results/fid_table.csv",
            caption="../report/fid_table.rst",
            category="Results",
        ),
        md="results/fid_table.md",
        # the same table as a page the report shows (every row, with its notes)
        html=report(
            "results/fid_table.html",
            caption="../report/fid_table.rst",
            category="Results",
        ),
    log:
        "logs/fid_table.log",
    conda:
        ENV
    shell:
        "python -m vqgan.eval.table --fid {input.fid:q} --recon {input.recon:q} --vqgan-train {input.vqgan:q}"
        " --transformer-train {input.transformer:q} --data {input.data:q} --out {output.csv:q}"
        " --markdown {output.md:q} --html {output.html:q} > {log:q} 2>&1"
