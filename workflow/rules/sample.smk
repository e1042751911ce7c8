# Sampling: the GPT generates code grids (KV-cached, seeded), the VQGAN decodes them to PNGs. One job per seed of
# sample.seeds: the FID of each seed is scored, and the table reports their mean and spread.


rule sample:
    input:
        transformer=rules.train_transformer.output.model,
        vqgan=rules.train_vqgan.output.model,
        train="results/data/{ds}/train",  # the palette the decoded frames are snapped onto (vqgan.palette)
    output:
        samples=report(
            directory("results/samples/{ds}/{variant}/seed{seed}"),
            # a pattern needs a wildcard: this one matches grid.png only, not every sample
            patterns=["{name,grid}.png"],
            caption="../report/samples.rst",
            category="Samples",
            subcategory="{ds} {variant}",
        ),
    log:
        "logs/sample/{ds}/{variant}/seed{seed}.log",
    benchmark:
        "benchmarks/sample/{ds}/{variant}/seed{seed}.tsv"
    conda:
        ENV
    resources:
        gpu=GPU,  # 1 where GPUs were detected (the job gets its own), else 0: the CPU, GPUs hidden
    params:
        cfg=sample_json,
        transformer=lambda w: f"results/transformer/{w.ds}/{w.variant}",
        vqgan=lambda w: f"results/vqgan/{w.ds}/{w.variant}",
        palette=lambda w: section_json(w.ds, w.variant, "vqgan", keys=("palette",)),
    shell:
        on_own_gpus(
            "python -m vqgan.sample --config {params.cfg:q} --transformer {params.transformer:q}"
            " --vqgan {params.vqgan:q} --palette {params.palette:q} --train-data {input.train:q}"
            " --out {output.samples:q} > {log:q} 2>&1"
        )
