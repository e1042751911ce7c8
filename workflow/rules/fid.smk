# Scoring: clean-fid FID/KID of samples and of VQGAN reconstructions (rFID) against the real val split, and the
# table that compares every dataset.


rule fid:
    input:
        real="results/data/{ds}/val",
        train="results/data/{ds}/train",
        gen=rules.sample.output.samples,
        recon=rules.eval_vqgan.output.recon,
    output:
        "results/fid/{ds}.json",
    log:
        "logs/fid/{ds}.log",
    benchmark:
        "benchmarks/fid/{ds}.tsv"
    threads: 4  # capped at --cores by Snakemake
    params:
        cfg=json.dumps(config["fid"], sort_keys=True),
        weights=config["weights_dir"],
    shell:
        "python -m vqgan.eval.fid --config {params.cfg:q} --real {input.real:q} --gen {input.gen:q}"
        " --recon {input.recon:q} --train {input.train:q} --name {wildcards.ds:q} --cache-dir results/fid/cache"
        " --weights-dir {params.weights:q} --out {output:q} > {log:q} 2>&1"


rule fid_table:
    input:
        fid=expand("results/fid/{ds}.json", ds=DATASETS),
        recon=expand("results/vqgan/{ds}/recon.json", ds=DATASETS),
        vqgan=expand("results/vqgan/{ds}/train.json", ds=DATASETS),
        transformer=expand("results/transformer/{ds}/train.json", ds=DATASETS),
    output:
        csv=report(
            "results/fid_table.csv",
            caption="../report/fid_table.rst",
            category="Results",
        ),
        md="results/fid_table.md",
    log:
        "logs/fid_table.log",
    shell:
        "python -m vqgan.eval.table --fid {input.fid:q} --recon {input.recon:q} --vqgan-train {input.vqgan:q}"
        " --transformer-train {input.transformer:q} --out {output.csv:q} --markdown {output.md:q} > {log:q} 2>&1"


from pathlib import Path


onsuccess:
    # the table (and its notes: warnings such as a dataset below its constant-image baseline) where it is seen
    if Path("results/fid_table.md").is_file():
        print("\n" + Path("results/fid_table.md").read_text())
