"""The command line's progress bar and log output (stderr), kept out of each other's way."""

import contextlib
import logging
import sys
import warnings


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
        self.text = self.quality = ""

    def __call__(self, iteration, results):
        best = max(results, key=lambda r: r.lower_bound)
        done = min(iteration / self.total, 1.0)
        fill = int(round(30 * done))
        self.quality = f"mean log-likelihood {best.lower_bound:.6g}"
        self.text = f"[{'#' * fill}{'.' * (30 - fill)}] iteration {iteration}/{self.total}  {self.quality}"
        self.draw()

    def status(self, text):
        """Show ``text`` (e.g. what happens before the first iteration) on the bar's line."""
        self.text = f"[{'.' * 30}] {text}"
        self.draw()

    def finish(self, n_iter, converged):
        """Draw the bar full: EM stopped at iteration ``n_iter``, converged or at ``total``."""
        if self.text:
            state = f"converged at iteration {n_iter}" if converged else f"iteration {n_iter}/{self.total}"
            self.text = f"[{'#' * 30}] {state}  {self.quality}".rstrip()
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
        self.text = self.quality = ""


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


@contextlib.contextmanager
def warnings_to_log(logger_name="dask_em.warnings"):
    """Route ``warnings.warn`` through the log for the duration (one line each, above the
    progress bar) instead of letting Python print them into the bar's line."""
    log = logging.getLogger(logger_name)

    def show(message, category, filename, lineno, file=None, line=None):
        log.warning("%s: %s", category.__name__, " ".join(str(message).split()))

    saved = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = saved


def setup_logging(level, bar=None):
    """Send the ``dask_em`` log to stderr at ``level``; returns the handler."""
    handler = BarAwareHandler(bar)
    handler.setFormatter(logging.Formatter("[dask-em] %(message)s"))
    log = logging.getLogger("dask_em")
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    return handler
