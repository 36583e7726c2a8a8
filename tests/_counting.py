"""Counting what a fit asks of dask, for the tests' pass and compute budgets."""

from dask.callbacks import Callback


class CountComputes(Callback):
    """Counts the graphs run by dask's local schedulers: one per ``dask.compute``
    (or ``persist``)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def _start(self, dsk):
        self.count += 1
