# Scoring: clean-fid FID/KID of samples and of VQGAN reconstructions (rFID) against the real val split,
# the table that compares every dataset, and the figures of the HTML report.


rule fid:
    input:
        real="results/data/{ds}/val",
        gen=rules.sample.output.samples,
        recon=rules.eval_vqgan.output.recon,
    output:
        "results/fid/{ds}.json",
    params:
        cfg=json.dumps(config["fid"], sort_keys=True),
        weights=config["weights_dir"],
    threads: 4  # capped at --cores by Snakemake
    log:
        "logs/fid/{ds}.log",
    benchmark:
        "benchmarks/fid/{ds}.tsv"
    shell:
        "python -m vqgan.fid --config {params.cfg:q} --real {input.real:q} --gen {input.gen:q}"
        " --recon {input.recon:q} --name {wildcards.ds:q} --cache-dir results/fid/cache"
        " --weights-dir {params.weights:q} --out {output:q} > {log:q} 2>&1"


rule fid_table:
    input:
        fid=expand("results/fid/{ds}.json", ds=DATASETS),
        recon=expand("results/vqgan/{ds}/recon.json", ds=DATASETS),
        vqgan=expand("results/vqgan/{ds}/train.json", ds=DATASETS),
        transformer=expand("results/transformer/{ds}/train.json", ds=DATASETS),
    output:
        csv=report("results/fid_table.csv", caption="../report/fid_table.rst", category="Results"),
        md="results/fid_table.md",
    log:
        "logs/fid_table.log",
    shell:
        "python -m vqgan.table --fid {input.fid:q} --recon {input.recon:q} --vqgan-train {input.vqgan:q}"
        " --transformer-train {input.transformer:q} --out {output.csv:q} --markdown {output.md:q} > {log:q} 2>&1"


rule plot_curves:
    input:
        "results/{stage}/{ds}/metrics.csv",
    output:
        report("results/plots/{stage}_{ds}_curves.png", caption="../report/curves.rst", category="Training curves"),
    wildcard_constraints:
        stage="vqgan|transformer",
    log:
        "logs/plot_curves/{stage}_{ds}.log",
    shell:
        "python -m vqgan.plots curves --metrics {input:q} --out {output:q} > {log:q} 2>&1"


rule plot_data:
    input:
        "results/data/{ds}/train",
    output:
        report("results/plots/data_{ds}.png", caption="../report/data.rst", category="Data"),
    log:
        "logs/plot_data/{ds}.log",
    shell:
        "python -m vqgan.plots data-grid --data {input:q} --out {output:q} > {log:q} 2>&1"


rule plot_benchmarks:
    # Time and peak memory of every compute job, from Snakemake's benchmark: files.
    input:
        rules.fid_table.output.csv,
    output:
        report("results/plots/benchmarks.png", caption="../report/benchmarks.rst", category="Cost"),
    log:
        "logs/plot_benchmarks.log",
    shell:
        "python -m vqgan.plots benchmarks --bench benchmarks/*/*.tsv --out {output:q} > {log:q} 2>&1"
