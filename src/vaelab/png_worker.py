"""Draw matplotlib figures to PNG in a second process while this one goes on computing.

A report builds its figures here (they need the model, so torch), but most of a figure's cost is
drawing it (matplotlib's constrained layout, text and rasterisation), which needs matplotlib only,
and the report's heaviest computation (the density image's IWAE decode) uses no matplotlib at
all. ``PngWorker`` starts a Python process running ``serve(FOLDER)``: it imports matplotlib
and ``vaelab.html`` (never torch), takes pickled figures and writes the PNG bytes of each with
``vaelab.html.figure_png``, the bytes this process would have written (tested).

Files carry the figures and the PNGs: each pickle goes to a private temporary folder and only its
name goes down the pipe, on one short line, so neither process ever waits on a full pipe. The
caller's matplotlib settings (``rcParams``) travel with them, so what is read at drawing time is
the same. Whatever the worker does not deliver (it could not start, died, or a figure failed to
pickle or draw) the caller draws itself, where any error is raised as usual.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import vaelab
from vaelab.html import figure_png

# Seconds the worker may take, after the last figure was sent, to finish drawing; past this it is
# stopped and the caller draws what is missing itself (a report's figures take well under 1 s each).
FINISH_TIMEOUT = 120.0
RC_FILE = "rcparams.pkl"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def spare_cpu(threads: int) -> bool:
    """Whether a second process would find a CPU of its own beside this process's ``threads``
    compute threads: the usable CPUs, less the 1-minute load average, leave room for them and
    (most of) one more.

    Without one, the worker only takes turns with this process: on a 2-CPU machine with one other
    busy process, a report with the worker took 12.9 s against 10.8 s without (bench_report.py),
    and torch's threads slow down badly when one of them must share its CPU.
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows, or no load average available: assume idle
        load = 0.0
    return usable_cpus() - load >= threads + 0.5


class PngWorker:
    """A child process that turns pickled figures into PNG bytes; use it as a context manager.

    ``submit(name, fig)`` hands a figure over (False when it cannot be: draw it yourself);
    ``finish(draw_here)`` shares out what is left, waits, and returns ``{name: png bytes}``.
    Leaving the ``with`` block stops the process and removes the temporary folder.
    """

    def __init__(self) -> None:
        import matplotlib

        self._dir = tempfile.TemporaryDirectory(prefix="vaelab-png-")
        self.folder = Path(self._dir.name)
        self._sent: list[str] = []
        self._proc: subprocess.Popen[str] | None = None
        try:
            # Every setting except the backend (drawing goes through an Agg canvas of its own).
            rc = {key: value for key, value in matplotlib.rcParams.items() if key != "backend"}
            (self.folder / RC_FILE).write_bytes(pickle.dumps(rc, protocol=pickle.HIGHEST_PROTOCOL))
            # The folder holding this vaelab goes at the end of the child's sys.path, so that it
            # finds vaelab even where the caller put it on sys.path by hand (a notebook), without
            # putting site-packages ahead of the standard library.
            package_root = str(Path(vaelab.__file__).resolve().parent.parent)
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, package_root, str(self.folder)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
            )
        except (OSError, pickle.PicklingError, TypeError, AttributeError):
            self.close()
            raise OSError("the PNG worker process could not be started") from None

    def submit(self, name: str, fig: Any) -> bool:
        """Send a figure to be drawn as ``name`` (letters, digits, underscores); False if it was not sent."""
        if self._proc is None or self._proc.stdin is None or self._proc.poll() is not None:
            return False
        try:
            data = pickle.dumps(fig, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError):  # e.g. a lambda formatter: drawn here
            return False
        try:
            (self.folder / f"{name}.pkl").write_bytes(data)
            self._proc.stdin.write(name + "\n")
            self._proc.stdin.flush()
        except OSError:  # the worker died (broken pipe) or the folder is full: draw here
            return False
        self._sent.append(name)
        return True

    def finish(
        self, draw_here: Callable[[str], bytes] | None = None, timeout: float = FINISH_TIMEOUT
    ) -> dict[str, bytes]:
        """The PNG bytes of the figures sent, by name, once the worker has drawn its share.

        ``draw_here(name)``: the caller's own drawing of a figure it sent. With it, this process
        takes over the figures the worker has not started yet, last sent first, while the worker
        goes on from the front of the queue: each figure is claimed by renaming its pickle, which
        succeeds for one process only, so none is drawn twice and neither process idles while
        figures wait (the worker may also just be slow to start on a busy machine). Figures
        neither delivered (the worker died) nor drawn here are missing from the result.
        """
        done = {}
        if draw_here is not None:
            for name in reversed(self._sent):
                try:
                    os.rename(self.folder / f"{name}.pkl", self.folder / f"{name}.here")
                except OSError:  # the worker claimed it first
                    continue
                done[name] = draw_here(name)
        if self._proc is not None:
            try:
                if self._proc.stdin is not None:
                    self._proc.stdin.close()  # end of the list: the worker exits when done
                self._proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                self._stop()
        for name in self._sent:
            path = self.folder / f"{name}.png"
            if name not in done and path.is_file():  # written under a temporary name, then renamed
                done[name] = path.read_bytes()
        return done

    def _stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        if self._proc is not None:
            self._proc.wait()
            if self._proc.stdin is not None and not self._proc.stdin.closed:
                try:
                    self._proc.stdin.close()
                except OSError:  # the pipe broke with the process: nothing left to flush
                    pass

    def close(self) -> None:
        """Stop the process (if it still runs) and remove the temporary folder."""
        self._stop()
        self._dir.cleanup()

    def __enter__(self) -> PngWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_CHILD = "import sys; sys.path.append(sys.argv[1]); from vaelab.png_worker import serve; serve(sys.argv[2])"


def serve(folder: str | Path) -> None:
    """The worker's loop: one figure name per line of stdin -> FOLDER/name.png."""
    import matplotlib

    folder = Path(folder)
    matplotlib.rcParams.update(pickle.loads((folder / RC_FILE).read_bytes()))
    for line in sys.stdin:
        name = line.strip()
        claimed = folder / f"{name}.worker"
        try:
            os.rename(folder / f"{name}.pkl", claimed)  # fails where the caller took it over (finish)
        except OSError:
            continue
        try:
            fig = pickle.loads(claimed.read_bytes())
            png = figure_png(fig)
        except Exception:  # noqa: BLE001 - the caller draws this figure itself and raises its error there
            continue
        tmp = folder / f"{name}.png.part"
        tmp.write_bytes(png)
        os.replace(tmp, folder / f"{name}.png")

