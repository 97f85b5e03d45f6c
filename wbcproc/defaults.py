"""The defaults of the service and of ``wbc adapt``, each defined once: the settings, the command line,
``wbc serve``, the inbox's settle rule, the watcher and the adaptation read them from here.  Standard library only, so the CLI can name them in its
help without importing anything else."""

from __future__ import annotations

MARKER_FILE = "READY"  # a file of this name in a sample folder marks it complete at once
QUIET_S = 5.0  # a sample folder unchanged for this long (seconds) has finished arriving
SCAN_S = 1.0  # seconds between scans of the inbox
PORT = 4200  # the embedded Prefect server and its UI
HOST = "127.0.0.1"  # loopback: the UI is not on the network unless asked
REVIEW_PORT = 4300  # the review app (wbc review; wbc serve runs it beside the Prefect UI)
SESSION_IDLE_MIN = 30.0  # a review app session ends after this many minutes without a request
CONCURRENCY = 2  # sample runs at once on the serving machine
RETRAIN_CRON = "0 3 * * 0"  # the weekly retrain deployment: Sundays at 03:00
TRAINING_DATA = "training-data"  # the laboratory's reviewed cells, under the app home

# wbc adapt
MIN_PER_CLASS = 5  # a reviewed class with fewer cells than this is refused: too few to move a boundary safely
HOLDOUT_FRACTION = 0.2  # of the laboratory's cells, by content hash: scored, never fitted
# the laboratory is validated for the domain guard (its own uncertainty thresholds) only with this many
# held-out cells, scored by the adapted model at least this well; else its samples keep DOMAIN_SHIFT
LAB_GUARD_MIN_CELLS, LAB_GUARD_MIN_ACCURACY = 20, 0.85
# the whole adaptation is fitted into this many seconds (0: no limit): on a slower CPU the fine-tune runs
# fewer epochs, and the guard rails judge the result as always
ADAPT_TIME_BUDGET_S = 300.0
