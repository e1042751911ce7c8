"""The exploring (Go-Explore-style) Atari collector: restore, coverage, determinism, split by lineage."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from atari_collect.__main__ import main
from atari_collect.config import ConfigError, parse_config
from atari_collect.emulator import Emulator
from atari_collect.explore import explore_lineage, plain_coverage
from vqgan.data.dataset import read_split

TINY = {
    "kind": "atari",
    "resolution": 32,
    "games": ["MsPacman", "Pong"],
    "frames_per_game": 150,
    "policy": {"name": "go_explore", "budget_steps": 600, "lineages": 3, "explore_steps": 40},
    "val_fraction": 0.3,
}


def collect(tmp_path, name, *extra):
    out = tmp_path / name
    assert main(["--config", json.dumps(TINY), "--out", str(out), "--no-progress", *extra]) == 0
    return out, read_split(out / "train"), read_split(out / "val")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return collect(tmp_path_factory.mktemp("explore"), "a", "--workers", "2")


def play(emu: Emulator, actions) -> list[np.ndarray]:
    frames = []
    for a in actions:
        emu.step(a)
        frames.append(emu.screen().copy())
    return frames


def test_restore_really_restores_same_state_gives_same_next_frames():
    emu = Emulator("ms_pacman", np.random.default_rng(0), frame_skip=4, sticky_actions=0.25)
    emu.reset()
    play(emu, [3] * 90)  # walk into the maze, past the intro
    snap, ram = emu.clone(), emu.ram().copy()
    actions = np.random.default_rng(1).integers(emu.n_actions, size=60)
    first = play(emu, actions)
    play(emu, [2] * 50)  # wander off so the state really differs
    assert not np.array_equal(emu.ram(), ram)
    emu.restore(snap)
    assert np.array_equal(emu.ram(), ram)
    again = play(emu, actions)
    assert all(np.array_equal(a, b) for a, b in zip(first, again)), "same state + same actions -> different frames"
    assert not all(np.array_equal(first[0], f) for f in first), "the replayed frames should not be all alike"


def test_explorer_finds_strictly_more_cells_than_sticky_random_on_ms_pacman():
    cfg = parse_config({"kind": "atari", "resolution": 32, "games": ["MsPacman"], "frames_per_game": 100,
                        "policy": {"name": "go_explore"}})
    budget = 6000
    # like with like: every distinct cell visited (the archive keeps only the ones that survived 25 more steps)
    explored = explore_lineage(cfg, 0, 0, budget, 100, progress=False).stats["cells_visited"]
    sticky = plain_coverage(cfg, 0, budget, repeat_prob=0.75)["cells"]
    assert explored > sticky, f"Go-Explore found {explored} cells, sticky-random {sticky} in {budget} steps"


def test_tiny_exploring_collection_follows_the_contract_and_records_coverage(tiny):
    out, train, val = tiny
    assert len(train) + len(val) == 2 * TINY["frames_per_game"]
    assert train.images.shape[1:] == (32, 32, 3) and train.images.dtype == np.uint8
    assert train.images.reshape(len(train), -1).std(axis=1).min() > 1
    per_game = train.manifest["per_game"]
    pac = per_game["MsPacman"]
    assert pac["policy"] == "go_explore" and len(pac["lineages"]) == 3
    for ln in pac["lineages"]:
        assert ln["cell"] == "ram:ms_pacman" and ln["cells"] > 1 and ln["curve"]
        assert ln["steps"] == 200  # budget 600 split over 3 lineages
    assert "frames_per_level" in pac and 0 <= pac["share_beyond_first_level"] <= 1
    assert per_game["Pong"]["lineages"][0]["cell"].startswith("pixels")
    # MsPacman frames carry the maze index from RAM; Pong has none
    assert set(train.meta.loc[train.meta.game == "MsPacman", "level"]) <= {0, 1, 2, 3}
    assert (train.meta.loc[train.meta.game == "Pong", "level"] == -1).all()
    assert (out / "coverage.png").stat().st_size > 1000


def test_coverage_figure_redrawn_from_the_manifests_is_the_collectors(tiny, tmp_path):
    # the report's plot_coverage job draws it from the split folders it declares, not from the collector's file
    from atari_collect.coverage import main as coverage

    out, _, _ = tiny
    assert coverage(["--data", str(out), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes() == (out / "coverage.png").read_bytes()


def test_no_lineage_and_no_episode_in_both_splits(tiny):
    _, train, val = tiny
    for game in TINY["games"]:
        tr, va = train.meta[train.meta.game == game], val.meta[val.meta.game == game]
        assert len(va) > 0 and len(tr) > 0
        assert not set(tr.episode) & set(va.episode)
    # lineages are recorded per frame through the episode numbering: episodes of a lineage are one block,
    # and the split takes whole blocks (3 lineages of 50 frames each per game)
    for game in TINY["games"]:
        n_val = (val.meta.game == game).sum()
        assert n_val % 50 == 0, f"{game}: {n_val} val frames is not a whole number of lineages"


def test_exploring_collection_is_deterministic(tiny, tmp_path):
    out, train, val = tiny
    out2, train2, val2 = collect(tmp_path, "b", "--workers", "1")
    assert (out / "train/images.npy").read_bytes() == (out2 / "train/images.npy").read_bytes()
    assert np.array_equal(val.images, val2.images)
    assert train.meta.equals(train2.meta)


def test_time_limit_stops_exploration():
    cfg = parse_config({"kind": "atari", "resolution": 32, "games": ["MsPacman"], "frames_per_game": 100,
                        "policy": {"name": "go_explore", "budget_steps": 10**7}})
    t0 = time.perf_counter()
    ln = explore_lineage(cfg, 0, 0, 10**7, 100, seconds=0.5, progress=False)
    assert time.perf_counter() - t0 < 5
    assert ln.stats["stopped_by_time_limit"] and ln.stats["steps"] < 10**7


def test_per_game_policy_and_bad_explore_keys():
    cfg = parse_config({**TINY, "policy": {"name": "sticky_random"},
                        "game_policy": {"MsPacman": {"name": "go_explore", "lineages": 2}}})
    assert cfg.policy_for(0).name == "go_explore" and cfg.policy_for(0).lineages == 2
    assert cfg.policy_for(1).name == "sticky_random"
    with pytest.raises(ConfigError, match="'game_policy.Breakout'"):
        parse_config({**TINY, "game_policy": {"Breakout": {"name": "go_explore"}}})
    with pytest.raises(ConfigError, match="'policy.budget_steps'"):
        parse_config({**TINY, "policy": {"name": "go_explore", "budget_steps": 10}})
    with pytest.raises(ConfigError, match="'policy.cell'"):
        parse_config({**TINY, "policy": {"name": "go_explore", "cell": "ram"}})  # Pong has no RAM cell


def test_archive_arrays_follow_the_cells_past_growth():
    """The selection arrays (kept incrementally) must equal what the cells say, also after the arrays grow."""
    from atari_collect.explore import Archive, Cell

    rng = np.random.default_rng(0)
    archive, chosen, seen = Archive(ms_pacman_weights=True), {}, {}
    for t in range(5000):
        key = int(rng.integers(3000))  # repeats: some offers replace a cell, some are refused
        cell = Cell(None, None, float(rng.integers(155)), 0.0, int(rng.integers(4)), t)
        archive.offer(key, cell)
        if t % 3 == 0:
            archive.visit(archive.cells[key])
            seen[key] = seen.get(key, 0) + 1
        if t % 50 == 0:
            picked = archive.select(rng)
            k = next(k for k, c in archive.cells.items() if c is picked)
            chosen[k] = chosen.get(k, 0) + 1
    assert len(archive) > 1024, "the test must pass the arrays' first growth"
    keys = list(archive.cells)
    assert archive.keys == keys
    n = len(keys)
    assert archive.chosen[:n].tolist() == [chosen.get(k, 0) for k in keys]
    assert archive.seen[:n].tolist() == [seen.get(k, 0) for k in keys]
    assert archive.progress[:n].tolist() == [archive.cells[k].progress for k in keys]
    assert archive.board[:n].tolist() == [archive.cells[k].board for k in keys]
    w = archive.weights()
    assert w.shape == (n,) and np.isclose(w.sum(), 1) and (w > 0).all()
