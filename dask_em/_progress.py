"""Progress of a fit: the command line's bar and log output (stderr), kept out of each
other's way; the notebook's display, updated in place; and which log lines a console
already shows."""

import contextlib
import logging
import math
import sys
import time
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


def in_notebook():
    """Whether this process is a Jupyter (IPython) kernel: a display can update in place."""
    ipython = sys.modules.get("IPython")  # imported by every kernel; never imported here
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def console_level(logger):
    """The lowest level a handler on ``logger``'s ancestry writes to the console
    (stdout or stderr) at, or ``None`` when none does (a file handler does not count).

    A record of ``logger`` at or above it is already shown once: a handler added for
    ``verbose`` should add only the records below it.
    """
    consoles = {id(s) for s in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__) if s is not None}
    levels = []
    current = logger
    while current is not None:
        for handler in current.handlers:
            is_stream = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
            if is_stream and id(getattr(handler, "stream", None)) in consoles:
                levels.append(handler.level)
        if not current.propagate:
            break
        current = current.parent
    return min(levels, default=None)


class NotebookProgress:
    """One line of a fit's progress in a notebook, updated in place; a fit callback.

    It shows the phase (the sampling pass, initialisation, a stepwise step, an EM
    iteration, scoring), the mean log-likelihood, the passes over the data so far
    (a stepwise step counts as the share of the row blocks it read) and the time
    since the fit started; :meth:`finish` shows whether the fit converged.

    Parameters
    ----------
    title : str
        What is fitted, e.g. ``"GaussianMixture"``.
    n_blocks : int
        Row blocks of the data: a pass reading all of them counts as one.
    show : callable, optional
        ``show(text)`` draws the line; by default an IPython display updated
        in place (``display_id``).
    min_interval : float, default=0.2
        Fewest seconds between two updates of the same phase (fast stepwise steps).
    """

    def __init__(self, title, n_blocks, show=None, min_interval=0.2):
        self.title, self.n_blocks = title, max(int(n_blocks), 1)
        self.show = show or _DisplayLine()
        self.min_interval = min_interval
        self.blocks_read = 0
        self.started = self.last_shown = time.perf_counter()
        self.phase_text, self.quality = "starting", ""

    def passes(self):
        """Passes over the data so far (a fraction while stepwise steps read part of one)."""
        return self.blocks_read / self.n_blocks

    def passed(self, n_blocks):
        """A pass listener (:func:`dask_em.engine.passes.watch_passes`): ``n_blocks`` read."""
        self.blocks_read += n_blocks

    def phase(self, text):
        """Show ``text`` as what the fit does now (before its first iteration)."""
        self.phase_text = text
        self.draw(force=True)

    def __call__(self, iteration, results):
        latest = max(results, key=lambda r: r.n_iter).history[-1]
        best = max((r.lower_bound for r in results if math.isfinite(r.lower_bound)), default=math.nan)
        if latest.get("kind") == "stepwise":
            self.phase_text = f"stepwise pass {latest['pass']}, step {iteration}"
            self.quality = f"mini-batch mean log-likelihood {best:.6g}"
        else:
            self.phase_text = f"iteration {iteration}"
            change = latest.get("change", math.nan)
            change = f", change {change:.2g}" if len(results) == 1 and math.isfinite(change) else ""
            self.quality = f"mean log-likelihood {best:.6g}{change}"
        self.draw()

    def finish(self, fits):
        """Show how the fit ended: ``fits`` the :class:`~dask_em.fitting.FitResult` of each model."""
        if len(fits) == 1:
            best = fits[0].best
            stopped = "converged" if best.converged else "did not converge"
            self.phase_text = f"{stopped} after {best.n_iter} iterations"
            self.quality = f"mean log-likelihood {best.lower_bound:.6g}"
        else:
            converged = sum(f.best.converged for f in fits)
            self.phase_text = f"{len(fits)} models fitted, {converged} converged"
            self.quality = ""
        self.draw(force=True)

    def text(self):
        passes = self.passes()
        passes = f"{passes:.0f}" if abs(passes - round(passes)) < 0.05 else f"{passes:.1f}"
        passes += " pass" if passes == "1" else " passes"
        parts = [self.phase_text, self.quality, passes, f"{time.perf_counter() - self.started:.1f} s"]
        return f"{self.title}: " + " | ".join(p for p in parts if p)

    def draw(self, force=False):
        now = time.perf_counter()
        if force or now - self.last_shown >= self.min_interval:
            self.last_shown = now
            self.show(self.text())


class _DisplayLine:
    """A text output of the running notebook cell that each call replaces."""

    def __init__(self):
        self.handle = None

    def __call__(self, text):
        from IPython.display import display

        data = {"text/plain": text}
        if self.handle is None:
            self.handle = display(data, raw=True, display_id=True)
        else:
            self.handle.update(data, raw=True)


logger = logging.getLogger("dask_em")


@contextlib.contextmanager
def verbosity(verbose: int):
    """Show dask-em's log on stderr while fitting when ``verbose > 0``.

    ``verbose=1`` shows INFO messages (one line per EM iteration: time, mean
    log-likelihood, change); ``verbose>=2`` adds DEBUG (initialisation details).
    Each line is shown once: the lines a console handler of the application already
    writes (on the ``dask_em`` logger or an ancestor, e.g. after
    ``logging.basicConfig``) are left to it, and a handler added for the fit writes
    only the others. Without ``verbose``, messages go to whatever logging the
    application configured.
    """
    if not verbose:
        yield
        return
    wanted = logging.DEBUG if verbose >= 2 else logging.INFO
    old_level = logger.level
    if logger.getEffectiveLevel() > wanted:
        logger.setLevel(wanted)
    shown = console_level(logger)
    handler = None
    if shown is None or shown > wanted:
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(wanted)
        handler.setFormatter(logging.Formatter("[dask-em] %(message)s"))
        if shown is not None:  # the console handler shows the records from ``shown`` up
            handler.addFilter(lambda record: record.levelno < shown)
        logger.addHandler(handler)
    try:
        yield
    finally:
        if handler is not None:
            logger.removeHandler(handler)
        logger.setLevel(old_level)


def notebook_progress(specs, prepared):
    """The display of a fit with ``verbose`` in a notebook, updated in place; None in a
    script (or without ``verbose``), where ``verbose`` shows log lines."""
    if not max(spec.verbose for spec in specs) or not in_notebook():
        return None
    identity = specs[0].identity
    title = type(identity).__name__ if identity is not None else specs[0].family.name
    if len(specs) > 1:
        title = f"{title}, {len(specs)} models"
    return NotebookProgress(title, prepared.X.numblocks[0])
