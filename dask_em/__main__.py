"""``python -m dask_em`` runs the command line (see :mod:`dask_em.cli`)."""

import sys

from dask_em.cli import main

sys.exit(main())
