# Pretrained weights, fetched once on a machine with network access (a local rule: stays on the login node
# under SLURM), so compute jobs only read local files.


localrules:
    fetch_weights,


rule fetch_weights:
    # Network: LPIPS's VGG16 trunk into weights_dir, so compute jobs never download. A file placed there by hand
    # is used as it is (the rule does not run).
    output:
        vgg16=f"{config['weights_dir']}/vgg16-397923af.pth",
    log:
        "logs/fetch_weights.log",
    params:
        weights=config["weights_dir"],
    shell:
        "python -m vqgan.weights --vgg16 --weights-dir {params.weights:q} > {log:q} 2>&1"
