# Atari: roll out ALE games (ROMs ship with ale-py) into the same dataset contract, split by episode/lineage.


rule collect_atari:
    output:
        train=directory("results/data/{ds}/train"),
        val=directory("results/data/{ds}/val"),
    log:
        "logs/collect_atari/{ds}.log",
    benchmark:
        "benchmarks/collect_atari/{ds}.tsv"
    wildcard_constraints:
        ds=_names(ATARI_DATASETS),
    # The collection heads the DAG's longest chain (collect -> VQGAN -> encode -> transformer -> sample -> fid),
    # and takes every core of a small machine: started after the COCO VQGANs, it would wait for two free cores
    # while one-core jobs keep filling them.
    priority: 50
    conda:
        ENV
    threads: 4  # capped at --cores by Snakemake
    resources:
        downloads_first=2,  # profiles/default: not beside a download, so offline a run stops in seconds
    params:
        cfg=lambda w: dataset_json(w.ds),
        out=lambda w: f"results/data/{w.ds}",
    shell:
        "python -m atari_collect --config {params.cfg:q} --out {params.out:q} --workers {threads} > {log:q} 2>&1"
