"""encode and sample stages on a tiny VQGAN: what lands on disk, its shapes and dtypes, and determinism."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from vqgan import encode, sample
from vqgan.config.build import gpt_config, vqgan_config
from vqgan.data.dataset import write_split
from vqgan.io.checkpoint import load_vqgan, save_model
from vqgan.io.images import grid, load_png, to_tensor
from vqgan.models.gpt import GPT

torch.set_num_threads(1)
CLASSES = ["Pong", "MsPacman"]


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """A 2-class 16 px dataset, an untrained tiny VQGAN (f=4: 4x4 codes) and its encoded codes."""
    from vqgan.models.vqgan import VQGAN

    root = tmp_path_factory.mktemp("stage")
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 5)):
        labels = np.arange(n) % 2
        images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
        meta = pd.DataFrame({"source_id": np.arange(n), "game": [CLASSES[c] for c in labels], "label": labels})
        write_split(root / "data" / split, images, meta, {"source": "test", "classes": CLASSES})
    torch.manual_seed(0)
    vq = VQGAN(vqgan_config(resolution=16, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
                           z_channels=8, n_codes=32, code_dim=4))
    save_model(vq, root / "vqgan")
    assert encode.main(["--model", str(root / "vqgan"), "--data", str(root / "data"), "--out", str(root / "codes"),
                        "--batch-size", "4", "--precision", "fp32"]) == 0
    return root


@pytest.fixture(scope="module")
def transformer(stage):
    """An untrained GPT shaped for the stage's codes, saved the way train_transformer saves it."""
    meta = json.loads((stage / "codes" / "codes.json").read_text())
    torch.manual_seed(0)
    gpt = GPT(gpt_config(vocab_size=meta["n_codes"], n_classes=meta["n_classes"], block_size=16, n_layer=1,
                        n_head=2, n_embd=16))
    save_model(gpt, stage / "transformer")
    shutil.copy(stage / "codes" / "codes.json", stage / "transformer" / "codes.json")
    return stage / "transformer"


def run_sample(stage, transformer, out, **cfg):
    return sample.main(["--config", json.dumps(cfg), "--transformer", str(transformer), "--vqgan",
                        str(stage / "vqgan"), "--out", str(stage / out), "--device", "cpu"])


def test_encode_writes_the_models_codes_in_the_smallest_dtype(stage):
    from vqgan.data.dataset import read_split

    meta = json.loads((stage / "codes" / "codes.json").read_text())
    assert meta["n_codes"] == 32 and meta["grid"] == [4, 4]
    assert meta["n_classes"] == 2 and meta["class_names"] == CLASSES and meta["counts"] == {"train": 10, "val": 5}
    vq = load_vqgan(stage / "vqgan").eval()
    for split, n in (("train", 10), ("val", 5)):
        codes = np.load(stage / "codes" / f"{split}.npy")
        labels = np.load(stage / "codes" / f"{split}_labels.npy")
        assert codes.shape == (n, 4, 4) and codes.dtype == np.int16
        assert labels.tolist() == (np.arange(n) % 2).tolist()
        expected = vq.encode_to_indices(to_tensor(read_split(stage / "data" / split).images)).numpy()
        np.testing.assert_array_equal(codes, expected)


def test_encode_in_bf16_records_its_precision_and_mostly_agrees_with_fp32(stage, tmp_path):
    assert json.loads((stage / "codes" / "codes.json").read_text())["precision"] == "fp32"
    assert encode.main(["--model", str(stage / "vqgan"), "--data", str(stage / "data"), "--out", str(tmp_path),
                        "--batch-size", "4", "--precision", "bf16"]) == 0
    assert json.loads((tmp_path / "codes.json").read_text())["precision"] == "bf16"
    for split in ("train", "val"):
        fp32, bf16 = np.load(stage / "codes" / f"{split}.npy"), np.load(tmp_path / f"{split}.npy")
        # an untrained model on noise images has many near-tie codes; a trained one agrees far more often
        assert (fp32 == bf16).mean() > 0.9, f"{split}: only {(fp32 == bf16).mean():.0%} of the codes agree"
    with pytest.raises(SystemExit):
        encode.main(["--model", str(stage / "vqgan"), "--data", str(stage / "data"), "--out", str(tmp_path),
                     "--precision", "fp16"])


@pytest.mark.parametrize("cpu_bf16,want", [("no", "fp32"), ("yes", "bf16")])
def test_encode_and_sample_record_what_auto_gave_on_this_cpu(stage, transformer, tmp_path, monkeypatch, cpu_bf16,
                                                             want):
    monkeypatch.setenv("VQGAN_HARDWARE", f"cpu_bf16={cpu_bf16}")
    assert encode.main(["--model", str(stage / "vqgan"), "--data", str(stage / "data"), "--out", str(tmp_path),
                        "--batch-size", "4", "--device", "cpu"]) == 0  # the schema's default: auto
    assert json.loads((tmp_path / "codes.json").read_text())["precision"] == want
    assert run_sample(stage, transformer, f"auto_{cpu_bf16}", n_per_class=1, batch_size=2) == 0
    info = json.loads((stage / f"auto_{cpu_bf16}" / "samples.json").read_text())
    assert info["precision"] == info["decode_precision"] == want
    assert info["settings"]["precision"] == info["settings"]["decode_precision"] == "auto"  # what the config said


def test_code_dtype_is_the_smallest_that_fits():
    assert encode.code_dtype(1024) == np.int16
    assert encode.code_dtype(32768) == np.int16  # codes 0..32767
    assert encode.code_dtype(32769) == np.int32


def test_sample_writes_per_class_pngs_at_the_vqgan_resolution(stage, transformer):
    assert run_sample(stage, transformer, "s1", n_per_class=3, batch_size=4, seed=1) == 0
    out = stage / "s1"
    pngs = sorted(p.name for p in out.glob("*.png") if p.name != "grid.png")
    assert pngs == [f"{c}_{i:05d}.png" for c in sorted(CLASSES) for i in range(3)]
    for name in pngs:
        assert load_png(out / name).shape == (16, 16, 3)
    info = json.loads((out / "samples.json").read_text())
    assert info["count"] == 6 and info["per_class"] == {"Pong": 3, "MsPacman": 3} and info["seed"] == 1
    # grid: 2 rows (classes) of 3 samples at 2x scale with 2 px padding, under a title, class names on the left
    picture = load_png(out / "grid.png")
    rows = [np.stack([load_png(out / f"{c}_{i:05d}.png") for i in range(3)]) for c in CLASSES]  # class order
    plain = grid(rows, scale=2)
    assert plain.shape == (2 * (32 + 2) + 2, 3 * (32 + 2) + 2, 3)
    assert picture.shape[0] == plain.shape[0] + 16 and picture.shape[1] > plain.shape[1]
    at = [x for x in range(picture.shape[1] - plain.shape[1] + 1)
          if np.array_equal(picture[16:, x : x + plain.shape[1]], plain)]
    assert len(at) == 1 and at[0] > 0, "the samples' grid is not in the picture, right of a label column"
    assert (picture[16:, : at[0]] < 128).any(), "the rows carry no class names"
    assert (picture[:16] < 128).any(), "no title"


def test_n_samples_is_dealt_round_robin_over_classes(stage, transformer):
    assert run_sample(stage, transformer, "s2", n_samples=5, batch_size=2) == 0
    info = json.loads((stage / "s2" / "samples.json").read_text())
    assert info["per_class"] == {"Pong": 3, "MsPacman": 2}
    assert len([p for p in (stage / "s2").glob("*.png") if p.name != "grid.png"]) == 5


def test_sampling_is_deterministic_for_a_seed(stage, transformer):
    for out, seed in (("d1", 5), ("d2", 5), ("d3", 6)):
        assert run_sample(stage, transformer, out, n_per_class=2, batch_size=4, seed=seed, top_k=None) == 0
    read = lambda out: [load_png(stage / out / f"{c}_{i:05d}.png") for c in CLASSES for i in range(2)]  # noqa
    assert all(np.array_equal(a, b) for a, b in zip(read("d1"), read("d2")))
    assert not all(np.array_equal(a, b) for a, b in zip(read("d1"), read("d3")))


def test_decoding_in_bf16_draws_the_same_codes_nearly_alike(stage, transformer):
    from vqgan.eval.recon import psnr_per_image

    for out, precision in (("p32", "fp32"), ("p16", "bf16")):
        assert run_sample(stage, transformer, out, n_per_class=2, batch_size=4, seed=3,
                          decode_precision=precision) == 0
    names = [f"{c}_{i:05d}.png" for c in CLASSES for i in range(2)]
    a = np.stack([load_png(stage / "p32" / n) for n in names])
    b = np.stack([load_png(stage / "p16" / n) for n in names])
    assert psnr_per_image(b, a).mean() > 30  # same sampled codes (the decoder runs after sampling), bf16 decode
    with pytest.raises(SystemExit, match="decode_precision='fp16'"):
        run_sample(stage, transformer, "bad16", n_per_class=1, decode_precision="fp16")


def test_sample_rejects_bad_config_and_mismatched_models(stage, transformer, tmp_path):
    with pytest.raises(SystemExit, match="not both"):
        run_sample(stage, transformer, "bad", n_per_class=1, n_samples=2)
    with pytest.raises(SystemExit, match="unknown sample keys"):
        run_sample(stage, transformer, "bad", n_per_clas=1)
    other = GPT(gpt_config(vocab_size=64, n_classes=2, block_size=16, n_layer=1, n_head=2, n_embd=16))
    save_model(other, tmp_path / "other")
    with pytest.raises(SystemExit, match="retrain the transformer"):
        run_sample(stage, tmp_path / "other", "bad", n_per_class=1)
    assert not (stage / "bad").exists()


def test_samples_are_snapped_onto_the_training_palette_when_asked(stage, transformer):
    from vqgan.data.dataset import read_split
    from vqgan.data.palette import colour_keys

    train = np.asarray(read_split(stage / "data" / "train").images)
    train_colours = set(colour_keys(train.reshape(-1, 3)).tolist())
    # as the sample rule passes it: the vqgan section's palette key
    palette = json.dumps({"palette": {"max_distance": 255, "min_share": 1e-5}})
    args = ["--config", json.dumps({"n_per_class": 2, "batch_size": 4, "seed": 1}), "--transformer", str(transformer),
            "--vqgan", str(stage / "vqgan"), "--device", "cpu", "--palette", palette]
    assert sample.main([*args, "--train-data", str(stage / "data" / "train"), "--out", str(stage / "snapped")]) == 0
    out = stage / "snapped"
    info = json.loads((out / "samples.json").read_text())
    assert info["palette"]["colours"] == len(train_colours) and info["palette"]["changed_share"] > 0
    pngs = [p for p in out.glob("*.png") if p.name != "grid.png"]
    decoded = set(colour_keys(np.stack([load_png(p) for p in pngs]).reshape(-1, 3)).tolist())
    assert len(pngs) == 4 and decoded <= train_colours
    # a palette without the split it is fitted on is a usage error, before anything is written
    with pytest.raises(SystemExit, match="needs --train-data"):
        sample.main([*args, "--out", str(stage / "no_train")])
    assert not (stage / "no_train").exists()
