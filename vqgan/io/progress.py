"""Progress bars that stay readable in log files: THE progress helper of every stage.

On a terminal `progress_bar(...)` is the usual tqdm bar. When stderr is not a terminal (a Snakemake rule's `log:`
redirect, a SLURM output file, a pipe) a redrawn bar would be one "line" of hundreds of '\\r'-separated updates;
there it writes one plain, complete line per interval instead:

    collect (plain policies):  50% 4000/8000 [00:14<00:14, 285.71frame/s]
    vqgan:  60% 600/1000 [01:02<00:41, 9.61it/s, g_loss=0.412, rec=0.301, usage=0.83]

A line is written when the bar starts, when another 10% is done (at most one per `interval`/12 seconds, so a
10-second job does not print ten lines), when `interval` seconds have passed since the last line (60 s: a one-hour
job writes ~70 lines, a one-minute job ~10), and once at the end with the final count (also for `leave=False`
bars: a log cannot erase a line, and where a loop stopped is worth keeping). A line that would say nothing new
(same count, description and postfix as the last one) is not written. No '\\r', no ANSI escapes, no empty lines.
"""
from __future__ import annotations

import math
import sys

from tqdm.std import tqdm

INTERVAL_S = 60.0  # the longest silence between two lines of a running bar
STEPS = 10  # plus a line at every 10% done (total known)


def _is_tty(file) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def progress_bar(iterable=None, *, interval: float = INTERVAL_S, **tqdm_kwargs) -> tqdm:
    """A tqdm bar (same arguments) on a terminal; `LineProgress` (plain lines every `interval` s) elsewhere.

    Which one is decided by the stream the bar writes to: `file=`, else sys.stderr (tqdm's default)."""
    file = tqdm_kwargs.get("file") or sys.stderr
    if _is_tty(file):
        return tqdm(iterable, **tqdm_kwargs)
    return LineProgress(iterable, interval=interval, **tqdm_kwargs)


class LineProgress(tqdm):
    """tqdm writing newline-terminated status lines instead of redrawing one (see the module docstring).

    Built like tqdm's own non-terminal front ends (tqdm.rich): `gui=True` leaves out tqdm's '\\r' status printer,
    and `display` is the one place that writes."""

    def __init__(self, *args, interval: float = INTERVAL_S, **kwargs):
        self.interval = float(interval)
        self._last_key = self._last_t = None
        self._last_step = -1
        kwargs["gui"] = True
        kwargs["disable"] = bool(kwargs.get("disable", False))  # tqdm's None = "off unless a TTY": never a TTY here
        super().__init__(*args, **kwargs)
        if not self.disable and self.delay <= 0:
            self.display()  # the first line: what runs, and its total

    def _step(self) -> int:
        return math.floor(self.n / self.total * STEPS) if self.total else -1

    def display(self, msg=None, pos=None, final: bool = False) -> bool:
        key = (self.n, self.total, self.desc, self.postfix)  # what the line says, timings aside
        if key == self._last_key:
            return True
        now, step = self._time(), self._step()
        if not final and self._last_t is not None:
            gap = now - self._last_t
            if gap < self.interval and not (step > self._last_step and gap >= self.interval / 12):
                return True
        self.fp.write(self.line() + "\n")  # one write per line: worker processes' lines do not interleave
        self.fp.flush()
        self._last_key, self._last_t, self._last_step = key, now, step
        return True

    def line(self) -> str:
        """The current status as one line: tqdm's meter without the bar."""
        d = self.format_dict
        fmt = None  # total unknown: tqdm's bar-less "desc: 12.3kB [00:04, 3.1kB/s]"
        if d["total"]:
            fmt = ("{desc}: " if d["prefix"] else "") + \
                "{percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
        return self.format_meter(**{**d, "bar_format": fmt, "ncols": None, "colour": None})

    def clear(self, *_, **__):
        pass  # nothing to erase in a log

    def close(self):
        if self.disable:
            return
        self._ema_dt = lambda: None  # the final line shows the average rate, as tqdm's own last redraw does
        self.display(final=True)
        super().close()
