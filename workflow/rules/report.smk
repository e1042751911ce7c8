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
    # Go-Explore's coverage (cells and levels over steps, kept frames per level and split), drawn by the collector
    # beside the splits, into the report
    input:
        "results/data/{ds}/train",
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
        "cp results/data/{wildcards.ds:q}/coverage.png {output:q} > {log:q} 2>&1"


rule plot_benchmarks:
    # Time and peak memory of every compute job, from Snakemake's benchmark: files
    # (benchmarks/<rule>/<ds>[/<variant>[/seed<n>]].tsv).
    input:
        rules.fid_table.output.csv,
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
        "python -m vqgan.eval.plots benchmarks --bench $(find benchmarks -name '*.tsv' | sort) --results results"
        " --out {output:q}"
        " > {log:q} 2>&1"
