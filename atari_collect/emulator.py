"""One Atari emulator (ale-py's ALEInterface) with v5 semantics, as both collectors use it.

Two choices, both measured on the shared 2-core machine:
- Not gymnasium and not ale-py's threaded vector env: the vector env spent 25-50% more CPU per frame than one
  gymnasium env (every sub-env loads the ROM twice, ~0.1 s CPU each, since seeding reloads it; plus a thread
  hand-off every step), so at 4000 frames per game it was slower than the single env (bench/collect_speed.py).
  Parallelism comes from independent processes instead (collect.py), which need no per-step synchronisation.
- Sticky actions are drawn here from a numpy generator, not by ALE (ALE's repeat_action_probability is 0):
  ALE seeds its sticky-action RNG only in loadROM, so every seed would cost a ROM load. With our own RNG one loaded
  emulator per process and game serves every stream: a stream restores the power-on snapshot and plays on with its
  own generator. It also makes a trajectory a pure function of (snapshot, generator state, policy), which is what
  Go-Explore needs to restore and replay. Semantics match ALE v5: each emulator frame repeats the previously
  executed action with probability `sticky_actions`, rewards sum over the `frame_skip` frames.
"""
from __future__ import annotations

import numpy as np

from vqgan.data.atari_screen import NATIVE_H, NATIVE_W

_POWER_ON: dict[str, tuple[object, object]] = {}  # rom -> (ALEInterface, power-on state), one per process


def _load(rom: str):
    if rom not in _POWER_ON:
        import ale_py

        ale = ale_py.ALEInterface()
        ale.setLoggerMode(ale_py.LoggerMode.Error)
        ale.setInt("random_seed", 1)  # fixed: the power-on state must be the same in every process
        ale.setFloat("repeat_action_probability", 0.0)
        ale.setInt("frame_skip", 1)
        ale.loadROM(ale_py.roms.get_rom_path(rom))
        ale.reset_game()
        _POWER_ON[rom] = (ale, ale.cloneState(include_rng=True))
    return _POWER_ON[rom]


class Emulator:
    """A game at power-on, stepped with frame skip and sticky actions drawn from `rng`.

    Emulators of the same ROM in one process share the underlying ALE (loading costs ~0.1 s CPU); use one at a
    time, or give each its own state via `clone`/`restore` as Go-Explore does.
    """

    def __init__(self, rom: str, rng: np.random.Generator, frame_skip: int = 4, sticky_actions: float = 0.25,
                 ram_lag: int = 0):
        self.ale, power_on = _load(rom)
        self.ale.restoreState(power_on)
        self.rng = rng
        self.frame_skip = frame_skip
        self.sticky = sticky_actions
        self.actions = list(self.ale.getMinimalActionSet())
        self.n_actions = len(self.actions)
        self.executed = self.actions[0]  # what the joystick did last frame (NOOP after reset)
        self._screen = np.empty((NATIVE_H, NATIVE_W, 3), dtype=np.uint8)
        # The RAM the screen was drawn from (see drawn_ram): kept only for games that draw from older RAM.
        self.ram_lag = ram_lag
        self._ram_before: list[np.ndarray] = []

    def reset(self) -> None:
        self.ale.reset_game()
        self.executed = self.actions[0]
        self._ram_before.clear()

    def step(self, action: int) -> float:
        """One agent step: `frame_skip` frames, each keeping the previous action with probability `sticky`."""
        wanted = self.actions[action]
        keep = self.rng.random(self.frame_skip) < self.sticky  # drawn in full every step: a fixed RNG stream
        reward = 0
        for k in range(self.frame_skip):
            if not keep[k]:
                self.executed = wanted
            if self.ram_lag:
                self._ram_before = (self._ram_before + [self.ale.getRAM()])[-self.ram_lag:]
            reward += self.ale.act(self.executed)
            if self.ale.game_over():
                break
        return float(reward)

    def game_over(self) -> bool:
        return self.ale.game_over()

    def lives(self) -> int:
        return self.ale.lives()

    def screen(self) -> np.ndarray:
        """The current (210, 160, 3) RGB screen (a reused buffer: copy or resize it before the next call)."""
        self.ale.getScreenRGB(self._screen)
        return self._screen

    def ram(self) -> np.ndarray:
        return self.ale.getRAM()

    def drawn_ram(self) -> np.ndarray:
        """The RAM the current screen was drawn from: read `ram_lag` emulator frames before the last step ended
        (Ms. Pac-Man draws from the RAM of one frame earlier; atari_collect.objects.ram_lag). Reading the RAM
        changes nothing in the emulator, so recording it keeps the frames identical. After a reset or restore,
        before `ram_lag` frames have run, it is the current RAM (the sprites stand still then)."""
        if self.ram_lag and len(self._ram_before) == self.ram_lag:
            return self._ram_before[0]
        return self.ale.getRAM()

    def clone(self) -> tuple[object, object, object]:
        """Everything the future depends on: emulator state, the joystick's last action and our RNG state."""
        return self.ale.cloneState(include_rng=True), self.executed, self.rng.bit_generator.state

    def restore(self, snapshot: tuple[object, object, object], with_rng: bool = True) -> None:
        """Return to a `clone`; with_rng=False keeps drawing fresh sticky-action randomness."""
        state, self.executed, rng_state = snapshot
        self.ale.restoreState(state)
        self._ram_before.clear()
        if with_rng:
            self.rng.bit_generator.state = rng_state
