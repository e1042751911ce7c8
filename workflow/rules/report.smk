# Figures of the HTML report (snakemake --report): training curves, data grids, per-stage cost.


rule plot_curves:
    input:
        "results/{stage}/{ds}/{variant}/metrics.csv",
    output:
        report(
            "results/plots/{stage}_{ds}_{variant}_curves.png",
            caption="../report/curves.rst",
            category="Training curves",
        ),
    log:
        "logs/plot_curves/{stage}_{ds}_{variant}.log",
    wildcard_constraints:
        stage="vqgan|transformer",
    conda:
        ENV
    shell:
        "python -m vqgan.eval.plots curves --metrics {input:q} --out {output:q} > {log:q} 2>&1"


rule plot_data:
    input:
        "results/data/{ds}/train",
    output:
        report(
            "results/plots/data_{ds}.png",
            caption="../report/data.rst",
            category="Data",
        ),
    log:
        "logs/plot_data/{ds}.log",
    conda:
        ENV
    shell:
        "python -m vqgan.eval.plots data-grid --data {input:q} --out {output:q} > {log:q} 2>&1"


rule plot_coverage:
    # Go-Explore's coverage (cells and levels over steps, kept frames per level and split), redrawn from the splits'
    # manifests: the collector's own coverage.png beside them exists only for some datasets (no optional outputs)
    input:
        train="results/data/{ds}/train",
        val="results/data/{ds}/val",
    output:
        report(
            "results/plots/coverage_{ds}.png",
            caption="../report/coverage.rst",
            category="Data",
        ),
    log:
        "logs/plot_coverage/{ds}.log",
    conda:
        ENV
    shell:
        "python -m atari_collect.coverage --data results/data/{wildcards.ds:q} --out {output:q} > {log:q} 2>&1"


rule plot_benchmarks:
    # Time and peak memory of every compute job, from Snakemake's benchmark: files, and its images/s from the
    # counts in each job's outputs (vqgan.eval.plots.STAGE_IMAGES reads them under --results)
    input:
        bench=benchmark_files,
        data=expand("results/data/{ds}/{split}", ds=DATASETS, split=["train", "val"]),
        vqgan=per_run("results/vqgan/{ds}/{variant}/train.json"),
        recon=per_run("results/vqgan/{ds}/{variant}/recon.json"),
        codes=per_run("results/codes/{ds}/{variant}/codes.json"),
        transformer=per_run("results/transformer/{ds}/{variant}/train.json"),
        samples=[
            f"results/samples/{ds}/{v}/seed{s}"
            for ds, v in runs()
            for s in sample_seeds(ds, v)
        ],
        fid=per_run("results/fid/{ds}/{variant}.json"),
    output:
        report(
            "results/plots/benchmarks.png",
            caption="../report/benchmarks.rst",
            category="Cost",
        ),
    log:
        "logs/plot_benchmarks.log",
    conda:
        ENV
    shell:
        "python -m vqgan.eval.plots benchmarks --bench {input.bench:q} --results results"
        " --out {output:q}"
        " > {log:q} 2>&1"
