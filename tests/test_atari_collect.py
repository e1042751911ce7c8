"""The plain Atari collector: a tiny real collection (ALE ROMs ship with ale-py, so this runs offline)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from atari_collect.__main__ import main
from atari_collect.config import ConfigError, parse_config
from atari_collect.dataset import split_by_group
from vqgan.data.atari_screen import crop_resize
from vqgan.data.dataset import read_split

TINY = {
    "kind": "atari",
    "resolution": 32,
    "games": ["Pong", "MsPacman"],
    "frames_per_game": 240,
    "max_episode_steps": 25,  # short episodes so a few hundred frames hold several of them
    "num_envs": 4,
    "val_fraction": 0.25,
}


def collect(tmp_path, name, cfg=TINY, *extra):
    out = tmp_path / name
    assert main(["--config", json.dumps(cfg), "--out", str(out), "--no-progress", *extra]) == 0
    return read_split(out / "train"), read_split(out / "val")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return collect(tmp_path_factory.mktemp("atari"), "a", TINY, "--workers", "2")


def test_tiny_collection_follows_the_dataset_contract(tiny):
    train, val = tiny
    for split in (train, val):
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (32, 32, 3)
        assert list(split.meta.columns[:7]) == ["source_id", "game", "label", "episode", "step", "action", "reward"]
        assert split.manifest["source"] == "ale" and split.class_names == ["Pong", "MsPacman"]
        assert split.manifest["ale_py_version"]
        # label is the index of the game in the config's list
        assert (split.meta["label"] == split.meta["game"].map({"Pong": 0, "MsPacman": 1})).all()
        assert split.meta["source_id"].is_unique
        # frames are real screens, not blank buffers
        assert split.images.reshape(len(split), -1).std(axis=1).min() > 1
    assert len(train) + len(val) == 2 * TINY["frames_per_game"]
    for game in TINY["games"]:
        n_val = (val.meta["game"] == game).sum()
        # whole episodes go to val, about val_fraction of each game's frames
        assert 0.1 * 240 <= n_val <= 0.4 * 240, (game, n_val)


def test_no_episode_in_both_splits(tiny):
    train, val = tiny
    key = lambda s: set(zip(s.meta["game"], s.meta["episode"]))  # noqa: E731
    assert key(train) and key(val)
    assert not key(train) & key(val), "an episode leaked across train and val"


def test_episodes_are_contiguous_step_sequences(tiny):
    train, _ = tiny
    for (_, _), ep in train.meta.groupby(["game", "episode"], sort=False):
        assert ep["step"].tolist() == list(range(len(ep))), "steps within an episode must count 0, 1, 2, ..."
        assert ep["action"].iloc[0] == -1 and (ep["action"].iloc[1:] >= 0).all()
    # max_episode_steps=25 cuts episodes: none is longer than 26 frames (reset frame + 25 steps)
    assert train.meta.groupby(["game", "episode"]).size().max() == 26


def test_same_config_and_seed_give_byte_identical_images(tiny, tmp_path):
    # one process here vs a pool in the fixture: the worker count must not change the data
    train, val = collect(tmp_path, "b", TINY, "--workers", "1")
    assert (tmp_path / "b/train/images.npy").read_bytes() == tiny[0].path.joinpath("images.npy").read_bytes()
    assert np.array_equal(val.images, tiny[1].images)
    assert train.meta.equals(tiny[0].meta)


def test_seed_override_changes_the_data(tiny, tmp_path):
    train, _ = collect(tmp_path, "c", TINY, "--seed-override", "7")
    assert train.manifest["seed"] == 7
    assert not np.array_equal(train.images[:50], tiny[0].images[:50])


def test_crop_is_applied_before_resizing(tmp_path):
    cfg = {**TINY, "games": ["MsPacman"], "frames_per_game": 40, "num_envs": 2, "crop": [0, 0, 172, 160]}
    train, _ = collect(tmp_path, "crop", cfg)
    assert train.images.shape[1:] == (32, 32, 3)
    # the resize helper crops exactly the native window it is given
    frame = np.arange(210 * 160 * 3, dtype=np.uint8).reshape(210, 160, 3)
    assert np.array_equal(crop_resize(frame, 16, [10, 20, 16, 16]), frame[10:26, 20:36])


def test_unknown_game_is_rejected_naming_it_and_valid_ones(capsys):
    with pytest.raises(ConfigError, match=r"'MsPacMann'.*MsPacman"):
        parse_config({**TINY, "games": ["Pong", "MsPacMann"]})
    with pytest.raises(SystemExit) as exit_:
        main(["--config", json.dumps({**TINY, "games": ["Frogger2000"]}), "--out", "/nonexistent/x"])
    assert exit_.value.code == 2 and "Frogger2000" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"resolution": 0}, "resolution"),
        ({"frames_per_game": "many"}, "frames_per_game"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"policy": {"name": "clever"}}, "policy.name"),
        ({"policy": {"repeat_prob": 2}}, "policy.repeat_prob"),
        ({"crop": [0, 0, 300, 160]}, "crop"),
        ({"frame_skipp": 4}, "frame_skipp"),
    ],
)
def test_bad_config_values_name_the_key(bad, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        parse_config({**TINY, **bad})


def test_game_names_accept_ale_spellings():
    cfg = parse_config({**TINY, "games": ["SpaceInvaders", "ALE/Breakout-v5"], "vqgan": {"ignored": True}})
    assert cfg.games == ["SpaceInvaders", "ALE/Breakout-v5"]


def test_split_takes_whole_groups_close_to_the_fraction():
    group = np.repeat(np.arange(10), [50, 10, 10, 10, 10, 10, 10, 10, 10, 10])  # one long episode
    val = split_by_group(group, 0.2, np.random.default_rng(0))
    for g in np.unique(group):
        assert len(set(val[group == g])) == 1, "a group was cut in two"
    assert 0.1 <= val.mean() <= 0.35
    with pytest.raises(Exception, match="only 1 episode"):
        split_by_group(np.zeros(10, dtype=int), 0.2, np.random.default_rng(0))
