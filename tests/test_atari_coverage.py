"""Frames that cover the game: an equal share per level (Ms. Pac-Man maze) from every lineage, reported per split."""
from __future__ import annotations

import json

import numpy as np
import pytest

from atari_collect.__main__ import main
from atari_collect.emulator import Emulator
from atari_collect.explore import LevelFrames, equal_shares
from vqgan.data.dataset import read_split


def test_equal_shares_fill_the_total_and_give_short_levels_all_they_have():
    assert equal_shares({0: 5000, 1: 3000, 2: 40, 3: 2000}, 1000) == {0: 320, 1: 320, 2: 40, 3: 320}
    assert equal_shares({0: 10, 1: 10, 2: 10}, 10) in ({0: 4, 1: 3, 2: 3}, {0: 3, 1: 4, 2: 3}, {0: 3, 1: 3, 2: 4})
    assert equal_shares({0: 3, 1: 2}, 10) == {0: 3, 1: 2}  # fewer candidates than frames: all of them
    assert equal_shares({-1: 700}, 100) == {-1: 100}       # a game without levels: one stratum


def offer_trajectory(levels: np.ndarray, emit: int, spill=None) -> tuple[LevelFrames, dict[str, np.ndarray]]:
    frames = LevelFrames(emit, 4, spill=spill)
    for i, lv in enumerate(levels):
        # the frame encodes its step so the test can check that images stay with their rows
        if frames.take(int(lv)):
            frames.add(int(lv), np.full((4, 4, 3), i % 251, np.uint8), order=i, episode=i // 100, step=i % 100,
                       action=i % 9, reward=float(i % 7))
    return frames, frames.choose()


@pytest.mark.parametrize("on_disk", [False, True], ids=["in-memory", "spilled"])
def test_level_frames_balance_levels_and_spread_each_evenly_over_its_steps(tmp_path, on_disk):
    # maze 1 dominates the steps (as the explorer's returns do), maze 4 is reached last and briefly
    levels = np.r_[np.zeros(7000), np.ones(3000), np.full(500, 2), np.zeros(1000), np.full(150, 3)].astype(int)
    frames, out = offer_trajectory(levels, 100, spill=tmp_path / "f.npy.candidates" if on_disk else None)
    assert frames.steps_per_level() == {0: 8000, 1: 3000, 2: 500, 3: 150}
    assert np.unique(out["level"], return_counts=True)[1].tolist() == [25, 25, 25, 25]
    assert (np.diff(out["order"]) > 0).all(), "frames must come out in trajectory order"
    assert (levels[out["order"]] == out["level"]).all()
    assert (frames.frames(out)[:, 0, 0, 0] == out["order"] % 251).all() and (out["step"] == out["order"] % 100).all()
    frames.write_chosen(out, tmp_path / "chosen.npy", chunk=7)  # chunks that do not divide the count
    assert (np.load(tmp_path / "chosen.npy")[:, 0, 0, 0] == out["order"] % 251).all()
    if on_disk:  # the frames lived in one file per level, and only there
        assert sorted(p.name for p in tmp_path.glob("f.npy.candidates.level*")) == [f"f.npy.candidates.level{i}" for i in range(4)]
        assert all("images" not in s for s in frames.levels.values())
    frames.close()
    assert not list(tmp_path.glob("*.candidates*")), "close() leaves no spill files"
    assert (out["reward"] == out["order"] % 7).all() and out["reward"].dtype == np.float32
    for lv in range(4):
        rank = np.searchsorted(np.flatnonzero(levels == lv), out["order"][out["level"] == lv])  # index within level
        gaps, stride = np.diff(rank), frames.levels[lv]["stride"]  # candidates are every stride-th step
        assert gaps.max() - gaps.min() <= stride, f"maze {lv + 1}: frames not evenly spread over its steps: {gaps}"
        n = (levels == lv).sum()
        assert rank[0] < n / 25 and rank[-1] >= n - n / 25, f"maze {lv + 1}: frames do not span its steps"


def test_level_frames_keep_every_step_when_there_are_no_more_steps_than_frames():
    levels = np.r_[np.zeros(30), np.ones(10), np.zeros(20)].astype(int)
    _, out = offer_trajectory(levels, 60)
    assert out["order"].tolist() == list(range(60))


# A RAM-forced Ms. Pac-Man: byte 0 (the maze index) is set before every agent step, so a lineage spends exactly
# PHASES steps in mazes 1-3 and then stays in maze 4 (random play never leaves maze 1 in a test's budget).
PHASES = (300, 60, 180)
TARGET_STEPS = 40
CFG = {
    "kind": "atari",
    "resolution": 16,
    "games": ["MsPacman", "Pong"],
    "frames_per_game": 200,
    "val_fraction": 0.25,
    "policy": {"name": "sticky_random"},
    "game_policy": {"MsPacman": {"name": "go_explore", "budget_steps": 4000, "lineages": 4, "explore_steps": 40,
                                 "target_levels": 4, "target_level_steps": TARGET_STEPS}},
}


@pytest.fixture(scope="module")
def forced(tmp_path_factory):
    real_step = Emulator.step

    def step(self, action):
        n = getattr(self, "forced_steps", 0)
        self.forced_steps = n + 1
        self.ale.setRAM(0, int(np.searchsorted(np.cumsum(PHASES), n, side="right")))
        return real_step(self, action)

    out = tmp_path_factory.mktemp("coverage") / "forced"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Emulator, "step", step)
        # one process, so the patch applies to every lineage
        assert main(["--config", json.dumps(CFG), "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    return out, read_split(out / "train"), read_split(out / "val")


def test_each_lineage_stops_at_the_level_target_and_gives_every_maze_its_share(forced):
    _, train, _ = forced
    pac = train.manifest["per_game"]["MsPacman"]
    assert pac["lineages_reaching_every_level"] == 4
    for ln in pac["lineages"]:
        # stopped once the 4th maze had TARGET_STEPS steps, far below the 1000-step limit of each lineage
        assert ln["reached_level_target"] and not ln["stopped_by_time_limit"]
        assert ln["steps"] == sum(PHASES) + TARGET_STEPS
        assert ln["steps_per_level"] == {"0": 300, "1": 60, "2": 180, "3": TARGET_STEPS}
        shares = list(ln["frames_per_level"].values())
        assert len(shares) == 4 and sum(shares) == 50 and max(shares) - min(shares) <= 1, ln["frames_per_level"]
    # steps went mostly to maze 1 (as with real exploration); the frames do not follow them
    assert pac["steps_per_level"]["0"] > 5 * pac["steps_per_level"]["3"]


def test_manifest_reports_frames_per_maze_per_split_and_every_maze_is_in_both(forced):
    out, train, val = forced
    for split in (train, val):
        pac = split.meta[split.meta.game == "MsPacman"]
        reported = split.manifest["frames_per_level"]
        assert set(reported) == {"MsPacman"}, "Pong has no levels and must not be reported"
        assert reported["MsPacman"] == {str(k): int(v) for k, v in pac.level.value_counts().sort_index().items()}
        shares = pac.level.value_counts(normalize=True)
        assert sorted(shares.index) == [0, 1, 2, 3] and shares.min() >= 0.2, shares.to_dict()
    assert (out / "coverage.png").stat().st_size > 1000
