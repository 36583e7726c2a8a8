"""The command line's progress bar and log output (stderr), kept out of each other's way."""

import logging
import sys


class ProgressBar:
    """A one-line bar of EM iterations on a terminal; a ``run_em`` callback.

    Parameters
    ----------
    total : int
        ``max_iter``: the bar is full at this iteration (EM may stop earlier).
    stream : file, default=sys.stderr
    enabled : bool or None
        None: only when ``stream`` is a terminal.
    """

    def __init__(self, total, stream=None, enabled=None):
        self.total, self.stream = max(int(total), 1), stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.text = ""

    def __call__(self, iteration, results):
        best = max(results, key=lambda r: r.lower_bound)
        done = min(iteration / self.total, 1.0)
        fill = int(round(30 * done))
        self.text = (
            f"[{'#' * fill}{'.' * (30 - fill)}] iteration {iteration}/{self.total}  "
            f"mean log-likelihood {best.lower_bound:.6g}"
        )
        self.draw()

    def draw(self):
        if self.enabled and self.text:
            self.stream.write("\r\033[K" + self.text)
            self.stream.flush()

    def clear(self):
        if self.enabled and self.text:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def close(self):
        if self.enabled and self.text:
            self.stream.write("\n")
            self.stream.flush()
        self.text = ""


class BarAwareHandler(logging.StreamHandler):
    """Writes log lines above the progress bar, then draws the bar again."""

    def __init__(self, bar=None, stream=None):
        super().__init__(stream or sys.stderr)
        self.bar = bar

    def emit(self, record):
        if self.bar is not None:
            self.bar.clear()
        super().emit(record)
        if self.bar is not None:
            self.bar.draw()


def setup_logging(level, bar=None):
    """Send the ``dask_em`` log to stderr at ``level``; returns the handler."""
    handler = BarAwareHandler(bar)
    handler.setFormatter(logging.Formatter("[dask-em] %(message)s"))
    log = logging.getLogger("dask_em")
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    return handler
