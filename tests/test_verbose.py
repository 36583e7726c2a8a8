"""``verbose``: each log line shown once whatever logging the application configured, and
the notebook's progress line (its text, its count of passes, its ending). The display
inside a real kernel is checked by running the quickstart notebook (test_examples.py)."""

import contextlib
import logging
import re
import sys
import warnings

import dask
import dask.array as da
import pytest

from dask_em import GaussianMixture
from dask_em._progress import NotebookProgress, in_notebook
from dask_em.engine import EMResult
from dask_em.engine.passes import watch_passes
from dask_em.fitting import FitResult
from tests._counting import CountComputes
from tests.conftest import make_blobs

X = make_blobs(n=1200, n_features=2, seed=41)


@contextlib.contextmanager
def root_handler(handler, fmt="%(levelname)s:%(name)s:%(message)s"):
    """``handler`` on the root logger for the duration, as ``logging.basicConfig`` adds one."""
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        handler.close()


def fit(verbose, callback=None, max_iter=3):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GaussianMixture(3, max_iter=max_iter, tol=0, verbose=verbose, random_state=0).fit(X, callback=callback)


def test_verbose_with_configured_logging_shows_each_line_once(capfd):
    """logging.basicConfig(level=INFO), then verbose=1: the application's handler shows the
    lines; verbose adds no second copy."""
    with root_handler(logging.StreamHandler(sys.stderr)):
        fit(verbose=1)
    err = capfd.readouterr().err
    assert err.count("iteration 2:") == 1, err
    assert "INFO:dask_em.engine.loop:iteration 3: mean log-likelihood" in err  # in the application's format


def test_verbose_adds_only_the_lines_a_console_handler_leaves_out(capfd):
    """A console handler showing WARNING and up: verbose=1 adds the INFO lines, and a
    warning logged during the fit is still shown once."""
    def warn_once(iteration, results):
        if iteration == 2:
            logging.getLogger("dask_em.test").warning("something to warn about")

    with root_handler(logging.StreamHandler(sys.stderr)) as handler:
        handler.setLevel(logging.WARNING)
        fit(verbose=1, callback=warn_once)
    err = capfd.readouterr().err
    assert err.count("iteration 2:") == 1 and "[dask-em] iteration 2:" in err, err
    assert err.count("something to warn about") == 1, err


def test_verbose_with_a_log_file_shows_lines_on_stderr_and_in_the_file(capfd, tmp_path):
    path = tmp_path / "fit.log"
    with root_handler(logging.FileHandler(path)):
        fit(verbose=1)
    err = capfd.readouterr().err
    assert err.count("iteration 2:") == 1 and "[dask-em] iteration 2:" in err, err
    assert path.read_text().count("iteration 2:") == 1


@pytest.mark.parametrize("configured", [False, True])
def test_verbose_2_shows_debug_details_once(capfd, configured):
    with root_handler(logging.StreamHandler(sys.stderr)) if configured else contextlib.nullcontext():
        fit(verbose=2, max_iter=1)
    err = capfd.readouterr().err
    # DEBUG lines of the sampling pass and of the starts on the sample
    assert err.count("valid rows (threshold") == 1, err
    assert err.count("start of seed") == 1, err
    assert ("DEBUG:dask_em.sampling:" in err) == configured


def test_the_command_line_run_in_process_leaves_the_logger_as_it_found_it(tmp_path, capfd):
    """``dask_em.cli.main`` sends the log to stderr for its run only: afterwards the
    application's logging (handlers, level, propagation to the root) is as it was."""
    from dask_em.cli import main

    log = logging.getLogger("dask_em")
    before = (list(log.handlers), log.level, log.propagate)
    status = main(["predict", str(tmp_path / "absent.npz"), str(tmp_path / "absent.zarr"),
                   "-o", str(tmp_path / "labels.zarr")])
    assert status == 2 and "absent" in capfd.readouterr().err
    assert (list(log.handlers), log.level, log.propagate) == before


def test_verbose_leaves_the_logger_as_it_found_it(capfd):
    log = logging.getLogger("dask_em")
    before = (list(log.handlers), log.level, log.propagate)
    fit(verbose=2, max_iter=1)
    assert (list(log.handlers), log.level, log.propagate) == before
    log.setLevel(logging.DEBUG)  # the application's choice stays, verbose=1 shows INFO
    try:
        fit(verbose=1, max_iter=1)
        assert log.level == logging.DEBUG
    finally:
        log.setLevel(before[1])
    err = capfd.readouterr().err
    # two fits, the first (verbose=2) alone showing DEBUG lines
    assert err.count("[dask-em] iteration 1:") == 2 and err.count("valid rows (threshold") == 1, err


def test_a_script_is_not_a_notebook(capfd):
    """Outside a kernel ``verbose`` logs lines on stderr and displays nothing on stdout."""
    assert not in_notebook()
    fit(verbose=1, max_iter=2)
    out, err = capfd.readouterr()
    assert out == "" and err.count("[dask-em] iteration") == 2


def _parse(line):
    m = re.fullmatch(r"GM: (.+?)(?: \| (.+))? \| ([0-9.]+) pass(?:es)? \| [0-9.]+ s", line)
    assert m, line
    return m.group(1), m.group(2), float(m.group(3))


def test_notebook_progress_counts_the_passes_of_batch_em():
    """Every pass a fit computes is counted (against dask's count of computes), and the
    line follows the iterations to the fitted result."""
    Xd = da.from_array(X, chunks=200)
    lines, quiet = [], []
    progress = NotebookProgress("GM", Xd.numblocks[0], show=lines.append, min_interval=0)
    throttled = NotebookProgress("GM", Xd.numblocks[0], show=quiet.append, min_interval=3600)
    counter = CountComputes()
    with counter, watch_passes(progress.passed), dask.config.set(scheduler="threads"):
        gm = GaussianMixture(3, tol=1e-4, random_state=0, algorithm="em", persist=False, verbose=0)
        progress.phase("drawing the sample")
        throttled.phase("drawing the sample")
        gm.fit(Xd, callback=lambda i, r: (progress(i, r), throttled(i, r)))
    iterations = [_parse(line) for line in lines[1:]]
    assert [phase for phase, _, _ in iterations] == [f"iteration {i}" for i in range(1, gm.n_iter_ + 1)]
    assert [passes for _, _, passes in iterations] == [1.0 + i for i in range(1, gm.n_iter_ + 1)]
    assert iterations[-1][2] == counter.count == 1 + gm.n_iter_
    assert iterations[-1][1].startswith(f"mean log-likelihood {gm.lower_bound_:.6g}, change ")
    assert len(quiet) == 1  # within min_interval only the phase was drawn

    best = EMResult(state=None, converged=gm.converged_, n_iter=gm.n_iter_, lower_bound=gm.lower_bound_)
    progress.finish([FitResult(best, [best])])
    assert gm.converged_
    assert _parse(lines[-1]) == (f"converged after {gm.n_iter_} iterations",
                                 f"mean log-likelihood {gm.lower_bound_:.6g}", 1.0 + gm.n_iter_)


def test_notebook_progress_of_stepwise_steps():
    """A stepwise step counts as the share of the row blocks it read."""
    Xd = da.from_array(X, chunks=100)  # 12 blocks, mini-batches of 2 to 3: 4 or more steps a pass
    lines = []
    progress = NotebookProgress("GM", Xd.numblocks[0], show=lines.append, min_interval=0)
    settings = {"scheduler": "threads", "dask_em.stepwise.passes": 2, "dask_em.stepwise.batch_chunks": 2}
    with watch_passes(progress.passed), dask.config.set(settings):
        gm = GaussianMixture(3, tol=1e-4, max_iter=2, random_state=0, algorithm="stepwise", persist=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm.fit(Xd, callback=progress)
    steps = [h for h in gm.history_ if h["kind"] == "stepwise"]
    shown = [_parse(line) for line in lines]
    assert len(shown) == len(steps) + gm.n_iter_
    read = 12  # blocks of the sampling pass
    for entry, (phase, quality, passes) in zip(steps, shown):
        read += entry["n_blocks"]
        assert phase == f"stepwise pass {entry['pass']}, step {entry['iteration']}"
        assert quality == f"mini-batch mean log-likelihood {entry['mean_loglik']:.6g}"
        assert passes == round(read / 12, 1)
    assert steps[-1]["pass"] == 2 and shown[len(steps) - 1][2] == 3.0
    assert shown[-1][0] == f"iteration {gm.n_iter_}" and shown[-1][2] == 3.0 + gm.n_iter_


def test_rows_left_out_are_logged_once_per_fit(caplog):
    """nan_policy='omit': the sampling pass and every EM pass see the NaN rows; the count
    is logged once per fit, not once per kind of pass."""
    Xn = X.copy()
    Xn[::10, 0] = float("nan")
    with caplog.at_level(logging.INFO, logger="dask_em"):
        GaussianMixture(2, nan_policy="omit", random_state=0).fit(da.from_array(Xn, chunks=300))
    lines = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert lines == ["left out 120 rows with NaN or infinite values (of 1200 rows); they get no label"], lines
