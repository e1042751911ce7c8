# Sampling: the GPT generates code grids (KV-cached, seeded), the VQGAN decodes them to PNGs.


rule sample:
    input:
        transformer=rules.train_transformer.output.model,
        vqgan=rules.train_vqgan.output.model,
    output:
        samples=report(
            directory("results/samples/{ds}"),
            # a pattern needs a wildcard: this one matches grid.png only, not every sample
            patterns=["{name,grid}.png"],
            caption="../report/samples.rst",
            category="Samples",
        ),
    log:
        "logs/sample/{ds}.log",
    benchmark:
        "benchmarks/sample/{ds}.tsv"
    params:
        cfg=lambda w: section_json(w.ds, "sample"),
        transformer=lambda w: f"results/transformer/{w.ds}",
        vqgan=lambda w: f"results/vqgan/{w.ds}",
    shell:
        "python -m vqgan.sample --config {params.cfg:q} --transformer {params.transformer:q}"
        " --vqgan {params.vqgan:q} --out {output.samples:q} > {log:q} 2>&1"
