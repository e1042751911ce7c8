"""The plain collector: random or sticky-random play, `num_envs` independent emulator streams per game.

Each stream is one seeded emulator that plays episodes back to back until it has its share of the game's frames.
Streams of all games run in a process pool (`workers`), each writing its own slice of the output, so:
- determinism: a stream's frames depend only on (seed, game, stream index), never on scheduling or worker count;
- memory: each stream writes its frames and their object boxes to files of its own in a scratch folder as it plays
  (`ImageFile`, `ObjectRecorder`), and only the small per-frame columns travel back, so memory does not grow with
  the number of frames;
- speed: processes need no per-step synchronisation (ale-py's threaded vector env hands off every step; measured
  slower here, see emulator.py), and a process loads each ROM once for all its streams; measured ratios in
  bench/collect_speed.py.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vqgan.data.atari_screen import crop_resize, resolve_game
from vqgan.data.dataset import ImageFile
from vqgan.io.progress import progress_bar

from .config import AtariConfig
from .dataset import GameFrames
from .explore import collect_explore
from .rollout import StickyRandom, emulator_with_objects, env_quotas, record_objects, run_jobs, stream_rngs


@dataclass
class Stream:
    """What one stream produced: its `quota` frames in the file `frames` (None: not kept), and their columns
    (episodes numbered from 0 within the stream)."""

    frames: Path | None
    episode: np.ndarray
    step: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    episodes_finished: int
    cpu_seconds: float
    objects: Path | None = None  # every frame's object boxes (ObjectRecorder records), for games with RAM rules


def play_stream(cfg: AtariConfig, label: int, stream: int, quota: int, frames: Path | None = None) -> Stream:
    """Play episodes with the plain policy until `quota` frames are recorded (reset frame, then one per step),
    writing them to the .npy `frames` and their object boxes beside it (None: neither is kept, e.g. for timing)."""
    t0 = time.process_time()
    emu_rng, rng = stream_rngs(cfg.seed, label, stream)
    emu, objects = emulator_with_objects(cfg, label, emu_rng, frames.with_suffix(".objects") if frames else None)
    pol = cfg.policy_for(label)
    policy = StickyRandom(emu.n_actions, pol.repeat_prob if pol.name == "sticky_random" else 0.0, rng)
    R = cfg.resolution
    sink = ImageFile(frames, quota, R) if frames is not None else None
    episode = np.zeros(quota, dtype=np.int64)
    step = np.zeros(quota, dtype=np.int64)
    action = np.full(quota, -1, dtype=np.int64)
    reward = np.zeros(quota, dtype=np.float32)

    ep, t, finished = 0, 0, 0
    emu.reset()
    for i in range(quota):
        if t > 0:  # step 0 is the frame after reset: no action led to it
            a = policy()
            action[i], reward[i] = a, emu.step(a)
        frame = crop_resize(emu.screen(), R, cfg.crop)
        if sink is not None:
            sink.write(frame[None])
        record_objects(objects, i, emu)
        episode[i], step[i] = ep, t
        if emu.game_over() or t >= cfg.max_episode_steps:
            finished += int(emu.game_over())
            emu.reset()
            policy.restart()
            ep, t = ep + 1, 0
        else:
            t += 1
    if sink is not None:
        sink.close()
    objects.flush()
    return Stream(frames, episode, step, action, reward, finished, time.process_time() - t0, objects.path)


def _play(job: tuple[AtariConfig, int, int, int, Path | None]) -> tuple[int, int, Stream]:
    cfg, label, stream, quota, frames = job
    return label, stream, play_stream(cfg, label, stream, quota, frames)


def collect(cfg: AtariConfig, scratch: Path | None, workers: int | None = None,
            progress: bool = True) -> list[GameFrames]:
    """Collect every game of `cfg` with its policy; one GameFrames per game, in the config's order, its frames
    in files under the folder `scratch` (None: frames are not kept)."""
    explore = [i for i in range(len(cfg.games)) if cfg.policy_for(i).name == "go_explore"]
    plain = [i for i in range(len(cfg.games)) if i not in explore]
    out = collect_plain(cfg, plain, scratch, workers, progress) if plain else {}
    if explore:
        out.update(collect_explore(cfg, explore, scratch, workers, progress))
    return [out[i] for i in range(len(cfg.games))]


def collect_plain(cfg: AtariConfig, labels: list[int], scratch: Path | None, workers: int | None = None,
                  progress: bool = True) -> dict[int, GameFrames]:
    """Collect the games `labels` of `cfg` with the random / sticky-random policy, frames into `scratch`."""
    ne = min(cfg.num_envs, cfg.frames_per_game)
    quota = env_quotas(cfg.frames_per_game, ne)
    jobs = [(cfg, label, s, int(quota[s]), Path(scratch) / f"game{label}-stream{s}.npy" if scratch else None)
            for label in labels for s in range(ne)]
    t0 = time.perf_counter()
    bar = progress_bar(total=cfg.frames_per_game * len(labels), desc="collect (plain policies)", unit="frame",
               disable=not progress, mininterval=2)
    results = {(label, s): r for label, s, r in run_jobs(_play, jobs, workers, lambda r: bar.update(len(r[2].step)))}
    bar.close()
    seconds = time.perf_counter() - t0

    games = {}
    for label in labels:
        game = cfg.games[label]
        streams = [results[label, s] for s in range(ne)]
        # Episode ids: (stream, episode within stream) in order, numbered 0..E-1 within the game.
        first = np.cumsum([0] + [int(r.episode.max()) + 1 for r in streams[:-1]])
        episode = np.concatenate([r.episode + f for r, f in zip(streams, first)])
        reward = np.concatenate([r.reward for r in streams])
        games[label] = GameFrames(
            game=game,
            parts=[(r.frames, len(r.step)) for r in streams],
            episode=episode,
            step=np.concatenate([r.step for r in streams]),
            action=np.concatenate([r.action for r in streams]),
            reward=reward,
            group=episode,
            level=np.full(len(episode), -1, dtype=np.int64),
            objects=None if streams[0].objects is None else [r.objects for r in streams],
            stats={
                "policy": cfg.policy_for(label).name,
                "rom": resolve_game(game),
                "streams": ne,
                "episodes_total": int(episode.max() + 1),
                "episodes_finished": int(sum(r.episodes_finished for r in streams)),
                "mean_return_per_episode": float(np.bincount(episode, weights=reward).mean()),
                "cpu_seconds": round(sum(r.cpu_seconds for r in streams), 2),
                "wall_seconds_plain_games": round(seconds, 2),
            },
        )
    return games
