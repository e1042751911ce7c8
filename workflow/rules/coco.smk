# COCO: download the official files (network; a local rule), then prepare the dataset with pycocotools.
# Writes the dataset contract (docs/design.md): results/data/{ds}/{train,val}/{images.npy,meta.csv,manifest.json}.


localrules:
    download_coco,


rule download_coco:
    # Network: stays on the login node under SLURM. Skipped when coco.root names a local copy.
    output:
        summary="resources/coco/.complete",
    log:
        "logs/download_coco.log",
    # before the compute jobs: offline, it fails in seconds, not after the Atari collection has run
    priority: 100
    conda:
        ENV
    resources:
        downloads_first=1,  # profiles/default: collect_atari waits for it
    params:
        coco=json.dumps(config["coco"], sort_keys=True),
        datasets=json.dumps(
            {ds: json.loads(dataset_json(ds)) for ds in COCO_DATASETS}, sort_keys=True
        ),
    shell:
        "python -m vqgan.data.coco download --config {params.coco:q} --datasets {params.datasets:q}"
        " --out resources/coco > {log:q} 2>&1"


rule prepare_coco:
    input:
        unpack(coco_source),
    output:
        train=directory("results/data/{ds}/train"),
        val=directory("results/data/{ds}/val"),
    log:
        "logs/prepare_coco/{ds}.log",
    benchmark:
        "benchmarks/prepare_coco/{ds}.tsv"
    wildcard_constraints:
        ds=_names(COCO_DATASETS),
    conda:
        ENV
    threads: 4  # capped at --cores by Snakemake
    params:
        cfg=lambda w: dataset_json(w.ds),
        root=coco_root(),
        out=lambda w: f"results/data/{w.ds}",
    shell:
        "python -m vqgan.data.coco prepare --config {params.cfg:q} --root {params.root:q} --out {params.out:q}"
        " --workers {threads} > {log:q} 2>&1"
