"""What ``progress=True`` shows: one line on stderr, rewritten in place.

A library call prints nothing unless asked. ``vaelab.train_run(..., progress=True)`` and
``vaelab.fit(..., progress=True)`` show the step, the loss under its objective's name, the
other terms, and the elapsed and remaining time; ``vaelab.evaluate(..., progress=True)`` and
``vaelab.evaluate_run(..., progress=True)`` show the test batches of the importance-sampled
evaluation, its long part::

    step 120/2000 · epoch 15 · −IWAE bound (k = 4) 3.557 (recon 5.234, kl 1.603) · 0:00:12 elapsed, 0:03:10 left

A terminal and a Jupyter notebook both take a carriage return as "back to the start of the
line", so the line is redrawn there (at most a few times a second) and finished with a newline
when the work ends, fails or is interrupted. Written to a file (a log, a pipe), it is a whole
line every ``LOG_INTERVAL`` seconds instead. Nothing here configures logging, draws random
numbers or needs a package beyond the standard library.

Anything else (a progress bar of your own, a plot that grows) takes the callbacks these use:
``on_step`` (training: a ``vaelab.train.StepInfo`` after every step) and ``on_batch``
(evaluation: the batches done and their total).
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from vaelab.train.members import StepInfo

# Seconds between redraws of the line in a terminal or a notebook, and between lines in a file.
REDRAW_INTERVAL = 0.2
LOG_INTERVAL = 10.0

Clock = Callable[[], float]


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``0:03:10``); ``?`` when it is not known yet."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = int(round(seconds))
    return f"{total // 3600}:{total // 60 % 60:02d}:{total % 60:02d}"


def _in_notebook(stream: TextIO) -> bool:
    """A Jupyter kernel's output stream (ipykernel's ``OutStream``), which the notebook shows with
    carriage returns applied."""
    return type(stream).__module__.startswith("ipykernel")


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # a closed or unusual stream
        return False


class ProgressLine:
    """One line of text on ``stream`` (default: ``sys.stderr`` when the line is made), redrawn in
    place in a terminal or a notebook, written as whole lines now and then elsewhere.

    ``show(text)`` redraws it when ``REDRAW_INTERVAL`` (file: ``LOG_INTERVAL``) has passed since
    the last draw, or always with ``force``; ``close(text)`` draws the last text and ends the line.
    """

    def __init__(self, stream: TextIO | None = None, *, clock: Clock = time.monotonic) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.clock = clock
        self._tty = _is_tty(self.stream)
        self.in_place = self._tty or _in_notebook(self.stream)
        self.interval = REDRAW_INTERVAL if self.in_place else LOG_INTERVAL
        self._last = -math.inf
        self._width = 0  # characters of the text drawn last (blanked when a shorter one follows)
        self._open = False  # a drawn line that no newline has finished yet
        self._pending: str | None = None  # text given but not drawn (too soon after the last draw)

    def show(self, text: str, *, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last < self.interval:
            self._pending = text
            return
        self._last, self._pending = now, None
        if self.in_place:
            text = self._fit(text)
            self.stream.write("\r" + text + " " * max(0, self._width - len(text)))
            self._width, self._open = len(text), True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self, text: str | None = None) -> None:
        """Draw ``text`` (else the last text not yet drawn) and end the line."""
        text = self._pending if text is None else text
        if text is not None:
            self.show(text, force=True)
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False

    def _fit(self, text: str) -> str:
        """A terminal wraps a line wider than itself, and a carriage return then goes back to the
        start of the last row only: the text is cut to the width instead."""
        if not self._tty:
            return text
        width = shutil.get_terminal_size().columns - 1
        return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _number(value: float) -> str:
    return f"{value:.4g}"


class TrainProgress:
    """The training line: an ``on_step`` callback (``vaelab.train.StepInfo``) drawing a
    ``ProgressLine``. ``loss_name`` names the loss (``vaelab.objectives.describe_loss``);
    ``also``: a callback of the caller's, called after the line with the same ``StepInfo``.

    The remaining time is the steps left at the rate of the steps this call has made so far
    (a resumed run does not count the steps it made before).
    """

    def __init__(self, loss_name: str, line: ProgressLine | None = None,
                 also: Callable[[StepInfo], None] | None = None) -> None:
        self.loss_name = loss_name
        self.line = ProgressLine() if line is None else line
        self.also = also
        self.started = self.line.clock()
        self._first: tuple[int, float] | None = None  # (step, time) of the first step seen
        self._skipped = 0

    def __call__(self, info: StepInfo) -> None:
        now = self.line.clock()
        if self._first is None:
            self._first = (info.step, now)
        self._skipped += int(info.skipped)
        first_step, first_time = self._first
        done = info.step - first_step
        rate = done / (now - first_time) if done > 0 and now > first_time else math.nan
        left = (info.total_steps - info.step) / rate if rate > 0 else math.nan
        terms = ", ".join(f"{name} {_number(v)}" for name, v in info.terms.items())
        parts = [f"step {info.step}/{info.total_steps}", f"epoch {info.epoch}",
                 f"{self.loss_name} {_number(info.loss)}" + (f" ({terms})" if terms else "")]
        if self._skipped:
            parts.append(f"{self._skipped} non-finite step{'s' if self._skipped > 1 else ''} skipped")
        if info.step >= info.total_steps:
            parts.append(f"{format_duration(now - self.started)} elapsed, done")
        else:
            parts.append(f"{format_duration(now - self.started)} elapsed, {format_duration(left)} left")
        self.line.show(" · ".join(parts), force=info.step == first_step or info.step >= info.total_steps)
        if self.also is not None:
            self.also(info)

    def close(self) -> None:
        """End the line (the last step's text, drawn if it was not)."""
        self.line.close()


class EvalProgress:
    """The evaluation line: an ``on_batch(done, total)`` callback drawing a ``ProgressLine``;
    ``what`` says what is evaluated (``128 points, IWAE with k = 1000``). ``also``: a callback
    of the caller's, called with the same numbers."""

    def __init__(self, what: str, line: ProgressLine | None = None,
                 also: Callable[[int, int], None] | None = None) -> None:
        self.what = what
        self.line = ProgressLine() if line is None else line
        self.also = also
        self.started = self.line.clock()
        self._first: tuple[int, float] | None = None

    def note(self, text: str) -> None:
        """Say what the evaluation does now, outside the batches (the diagnostics after them)."""
        self.line.show(f"evaluating {self.what}: {text} · {self._elapsed()} elapsed", force=True)

    def __call__(self, done: int, total: int) -> None:
        if self.also is not None:
            self.also(done, total)
        now = self.line.clock()
        if self._first is None:
            self._first = (done, now)
        first_done, first_time = self._first
        rate = (done - first_done) / (now - first_time) if done > first_done and now > first_time else math.nan
        left = "" if done >= total else f", {format_duration((total - done) / rate if rate > 0 else math.nan)} left"
        self.line.show(f"evaluating {self.what}: batch {done}/{total} · {self._elapsed()} elapsed{left}",
                       force=done == first_done or done >= total)

    def close(self, text: str | None = None) -> None:
        """End the line, with ``text`` (e.g. ``done``) after what is evaluated, and the time taken."""
        self.line.close(None if text is None else f"evaluating {self.what}: {text} in {self._elapsed()}")

    def _elapsed(self) -> str:
        return format_duration(self.line.clock() - self.started)
