"""vqgan.io.progress: a normal bar on a terminal, plain lines in a log (a rule's `log:` file, SLURM output, a pipe)."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time

from conftest import REPO
from tqdm.std import tqdm

from vqgan.io.progress import LineProgress, progress_bar

LINE = re.compile(r"^demo: +(\d+)% (\d+)/40 \[\d\d:\d\d<[^,\]]+, [^\]]+\]$")


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


class Clock:
    """A time source the test moves by hand (tqdm reads its clock through `self._time`)."""

    def __init__(self):
        self.t = float(int(time.time()) + 1)  # after the first line (real clock); whole seconds: exact gaps

    def __call__(self):
        return self.t


def lines_of(text: str) -> list[str]:
    assert not text or text.endswith("\n"), f"the last line is not terminated: {text[-80:]!r}"
    return text.split("\n")[:-1]


def test_a_log_gets_complete_plain_lines_with_the_postfix_and_the_final_count():
    out = io.StringIO()
    bar = progress_bar(range(40), desc="demo", file=out, interval=0, mininterval=0)
    for i in bar:
        if i % 10 == 9:
            bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text, repr(text[:200])
    lines = lines_of(text)
    assert len(lines) > 10, lines  # interval=0: a line per refresh
    for line in lines:
        assert LINE.match(line), f"not a complete status line: {line!r}"
    counts = [int(LINE.match(line).group(2)) for line in lines]
    assert counts[0] == 0 and counts[-1] == 40 and counts == sorted(counts), counts
    assert lines[-1].startswith("demo: 100% 40/40 [") and lines[-1].endswith(", loss=0.025]"), lines[-1]
    assert any(line.endswith(", loss=0.100]") for line in lines), lines
    assert len(set(lines)) == len(lines), "a line repeated"
    assert counts.count(40) == 1, "the final state written more than once"


def test_lines_come_every_tenth_and_every_interval_not_every_update():
    out = io.StringIO()
    bar = progress_bar(total=100, desc="demo", file=out, interval=60, mininterval=0)
    clock = Clock()
    bar._time = clock  # noqa: SLF001 (tqdm's own hook for a test clock)
    bar.start_t = bar.last_print_t = clock.t
    for _ in range(100):  # 1 step per second: the 10% lines (every 10 s) come before the 60 s interval
        clock.t += 1
        bar.update(1)
    for k in range(5):  # stalled at 100 for 2.5 min, the postfix changing every 30 s: one line a minute
        clock.t += 30
        bar.set_postfix(check=f"#{k}")
    bar.close()
    counts = [int(m.group(1)) for m in re.finditer(r" (\d+)/100 ", out.getvalue())]
    # 100: at 100 s (the last tenth), at 160 and 220 s (a minute apart while the postfix changes), at close
    assert counts == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 100, 100, 100], counts
    assert out.getvalue().endswith(", check=#4]\n"), out.getvalue()[-200:]


def test_a_fast_bar_writes_its_first_and_last_line_only():
    out = io.StringIO()
    for _ in progress_bar(range(1000), desc="demo", file=out, mininterval=0):
        pass
    assert [line.split("[")[0] for line in lines_of(out.getvalue())] == ["demo:   0% 0/1000 ", "demo: 100% 1000/1000 "]


def test_leave_false_unknown_total_and_double_close_write_no_empty_or_repeated_lines():
    out = io.StringIO()
    with progress_bar(desc="bytes", unit="B", unit_scale=True, file=out, interval=0, mininterval=0,
                      leave=False) as bar:
        for _ in range(3):
            bar.update(1024)
    bar.close()  # again: nothing more
    lines = lines_of(out.getvalue())
    assert "\r" not in out.getvalue() and all(lines), lines
    assert [line.split(" [")[0] for line in lines] == ["bytes: 0.00B", "bytes: 1.02kB", "bytes: 2.05kB",
                                                      "bytes: 3.07kB"], lines


def test_disable_writes_nothing():
    out = io.StringIO()
    bar = progress_bar(total=5, file=out, disable=True)
    bar.update(5)
    bar.close()
    assert out.getvalue() == ""


def test_a_terminal_gets_the_normal_bar():
    tty = FakeTTY()
    bar = progress_bar(range(5), desc="demo", file=tty, mininterval=0)
    assert type(bar) is tqdm, type(bar)
    list(bar)
    assert "\r" in tty.getvalue() and "demo: 100%|" in tty.getvalue()  # redrawn in place, with the bar
    assert isinstance(progress_bar(total=1, file=io.StringIO()), LineProgress)


def test_stderr_into_a_pipe_gets_lines():
    # the default stream, as a Snakemake `log:` redirect or SLURM sees it: stderr is not a terminal
    code = ("from vqgan.io.progress import progress_bar\n"
            "for _ in progress_bar(range(3), desc='demo', interval=0, mininterval=0): pass\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert [line.split(" [")[0] for line in lines_of(proc.stderr)] == [
        "demo:   0% 0/3", "demo:  33% 1/3", "demo:  67% 2/3", "demo: 100% 3/3"], proc.stderr
