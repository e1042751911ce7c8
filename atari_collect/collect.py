"""The plain collector: random or sticky-random play in ale-py's native vector env.

Why the vector env: it steps `num_envs` emulators in C++ threads and resizes there (INTER_AREA), so Python only
picks actions and copies small frames; measured 1.3-1.8x a gymnasium single-env loop on 2 busy cores
(see bench/atari_collect.py).

Determinism: every emulator is seeded explicitly (ALE treats a seed <= 0 as "draw from the OS", so seeds are >= 1),
actions come from one seeded numpy generator drawn in a fixed order, and each environment owns a fixed slice of
the output array. Thread scheduling therefore cannot change a byte of images.npy.
"""
from __future__ import annotations

import os
import time

import numpy as np
from tqdm import tqdm

from .config import AtariConfig
from .dataset import GameFrames
from .frames import NATIVE_H, NATIVE_W, crop_resize
from .games import resolve_game


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def game_seeds(seed: int, label: int) -> tuple[np.random.SeedSequence, ...]:
    """Independent streams for (emulators, policy) of one game; adding a game never changes another's data."""
    return tuple(np.random.SeedSequence([seed, label]).spawn(2))


def emulator_seeds(ss: np.random.SeedSequence, n: int) -> np.ndarray:
    # ALE reseeds only for seeds > 0 (0 means "random device"); keep them in int32 range.
    return (ss.generate_state(n, dtype=np.uint32) % (2**31 - 2) + 1).astype(np.int64)


def env_quotas(frames: int, num_envs: int) -> np.ndarray:
    """Frames each environment contributes; they add up to exactly `frames`."""
    q = np.full(num_envs, frames // num_envs, dtype=np.int64)
    q[: frames % num_envs] += 1
    return q


def collect_game_vector(cfg: AtariConfig, label: int, num_threads: int | None = None,
                        progress: bool = True) -> GameFrames:
    """Play one game with the random / sticky-random policy in a vector env; return its frames."""
    import ale_py

    game = cfg.games[label]
    rom = resolve_game(game)
    ne = min(cfg.num_envs, cfg.frames_per_game)
    R = cfg.resolution
    # With a crop, ask for native frames (the vector env resizes only when both sides differ from 210x160)
    # and crop+resize here with the same INTER_AREA; without, let the C++ threads resize.
    native = cfg.crop is not None
    env = ale_py.AtariVectorEnv(
        rom,
        num_envs=ne,
        num_threads=min(num_threads or default_threads(), ne),
        frameskip=cfg.frame_skip,
        repeat_action_probability=cfg.sticky_actions,
        max_num_frames_per_episode=cfg.max_episode_steps * cfg.frame_skip,
        img_height=NATIVE_H if native else R,
        img_width=NATIVE_W if native else R,
        grayscale=False,
        stack_num=1,
        maxpool=False,          # dataset frames are what the screen showed, not a max over two frames
        noop_max=1,             # no random no-op starts: sticky actions already vary the episodes
        use_fire_reset=False,   # the policy presses FIRE often enough; keep the reset identical for all games
        reward_clipping=False,  # the meta records real game rewards
    )
    n_actions = int(env.single_action_space.n)
    ss_env, ss_policy = game_seeds(cfg.seed, label)
    rng = np.random.default_rng(ss_policy)
    repeat = cfg.policy.repeat_prob if cfg.policy.name == "sticky_random" else 0.0

    quota = env_quotas(cfg.frames_per_game, ne)
    offset = np.concatenate([[0], np.cumsum(quota)[:-1]])
    F = cfg.frames_per_game
    images = np.empty((F, R, R, 3), dtype=np.uint8)
    env_of = np.repeat(np.arange(ne), quota)
    local_ep = np.zeros(F, dtype=np.int64)
    step = np.zeros(F, dtype=np.int64)
    action = np.full(F, -1, dtype=np.int64)
    reward = np.zeros(F, dtype=np.float32)

    count = np.zeros(ne, dtype=np.int64)
    ep = np.zeros(ne, dtype=np.int64)
    t_ep = np.zeros(ne, dtype=np.int64)
    last = rng.integers(n_actions, size=ne)
    done = np.zeros(ne, dtype=bool)

    def record(obs, act, rew):
        active = np.flatnonzero(count < quota)
        idx = offset[active] + count[active]
        frames = obs[active, -1]  # (k, H, W, 3): the newest frame of the (size-1) stack
        if native:
            images[idx] = np.stack([crop_resize(f, R, cfg.crop) for f in frames])
        else:
            images[idx] = frames
        local_ep[idx], step[idx], action[idx], reward[idx] = ep[active], t_ep[active], act[active], rew[active]
        count[active] += 1
        return len(active)

    t0 = time.perf_counter()
    bar = tqdm(total=F, desc=f"{game} ({cfg.policy.name})", unit="frame", disable=not progress, mininterval=2)
    obs, info = env.reset(seed=emulator_seeds(ss_env, ne))
    bar.update(record(obs, np.full(ne, -1), np.zeros(ne, np.float32)))
    episodes_ended = 0
    while (count < quota).any():
        # Draw both arrays every step, for every env, so the action stream never depends on what happened.
        keep = rng.random(ne) < repeat
        fresh = rng.integers(n_actions, size=ne)
        act = np.where(keep & ~done, last, fresh)
        obs, rew, term, trunc, info = env.step(act)
        # Autoreset NEXT_STEP: an env that ended on the previous step ignored `act` and returns its reset frame.
        ep[done] += 1
        t_ep[:] = np.where(done, 0, t_ep + 1)
        act = np.where(done, -1, act)
        rew = np.where(done, 0.0, rew).astype(np.float32)
        bar.update(record(obs, act, rew))
        last = np.where(act < 0, fresh, act)  # a reset step took no action: start from a fresh one
        episodes_ended += int((term | trunc).sum())
        done = term | trunc
    bar.close()
    env.close()
    seconds = time.perf_counter() - t0

    # Episode ids: (env, local episode) in collection order, renumbered 0..E-1 within the game.
    key = env_of * (1 << 32) + local_ep
    _, episode = np.unique(key, return_inverse=True)
    return GameFrames(
        game=game, images=images, episode=episode.astype(np.int64), step=step, action=action, reward=reward,
        group=episode.astype(np.int64), level=np.full(F, -1, dtype=np.int64),
        stats={
            "policy": cfg.policy.name,
            "rom": rom,
            "seconds": round(seconds, 2),
            "frames_per_second": round(F / max(seconds, 1e-9), 1),
            "episodes_total": int(episode.max() + 1),
            "episodes_finished": episodes_ended,
            "mean_episode_return": float(_episode_returns(episode, reward).mean()),
        },
    )


def _episode_returns(episode: np.ndarray, reward: np.ndarray) -> np.ndarray:
    return np.bincount(episode, weights=reward.astype(np.float64))
