# Data stages: COCO (download, then prepare with pycocotools) and Atari (collect with ALE).
# Both write the dataset contract of DESIGN.md: results/data/{ds}/{train,val}/{images.npy,meta.csv,manifest.json}.


localrules:
    download_coco,
    fetch_weights,


rule fetch_weights:
    # Network: LPIPS's VGG16 trunk into weights_dir, so compute jobs never download. A file placed there by hand
    # is used as it is (the rule does not run).
    output:
        vgg16=f"{config['weights_dir']}/vgg16-397923af.pth",
    params:
        weights=config["weights_dir"],
    log:
        "logs/fetch_weights.log",
    shell:
        "python -m vqgan.weights --vgg16 --weights-dir {params.weights:q} > {log:q} 2>&1"


rule download_coco:
    # Network: stays on the login node under SLURM. Skipped when coco.root names a local copy.
    output:
        summary="resources/coco/.complete",
    params:
        coco=json.dumps(config["coco"], sort_keys=True),
        datasets=json.dumps({ds: json.loads(dataset_json(ds)) for ds in COCO_DATASETS}, sort_keys=True),
    log:
        "logs/download_coco.log",
    shell:
        "python -m vqgan.coco download --config {params.coco:q} --datasets {params.datasets:q}"
        " --out resources/coco > {log:q} 2>&1"


rule prepare_coco:
    input:
        unpack(coco_source),
    output:
        train=directory("results/data/{ds}/train"),
        val=directory("results/data/{ds}/val"),
    wildcard_constraints:
        ds=_names(COCO_DATASETS),
    params:
        cfg=lambda w: dataset_json(w.ds),
        root=coco_root(),
        out=lambda w: f"results/data/{w.ds}",
    threads: 4  # capped at --cores by Snakemake
    log:
        "logs/prepare_coco/{ds}.log",
    benchmark:
        "benchmarks/prepare_coco/{ds}.tsv"
    shell:
        "python -m vqgan.coco prepare --config {params.cfg:q} --root {params.root:q} --out {params.out:q}"
        " --workers {threads} > {log:q} 2>&1"


rule collect_atari:
    output:
        train=directory("results/data/{ds}/train"),
        val=directory("results/data/{ds}/val"),
    wildcard_constraints:
        ds=_names(ATARI_DATASETS),
    params:
        cfg=lambda w: dataset_json(w.ds),
        out=lambda w: f"results/data/{w.ds}",
    threads: 4  # capped at --cores by Snakemake
    log:
        "logs/collect_atari/{ds}.log",
    benchmark:
        "benchmarks/collect_atari/{ds}.tsv"
    shell:
        "atari-collect --config {params.cfg:q} --out {params.out:q} --workers {threads} > {log:q} 2>&1"
