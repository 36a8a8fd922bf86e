"""Suite-wide settings: a private performance history, no recording, the analytic cost model.

Sessions record their runs in the performance history by default; the suite's runs would fill
the developer's own history (``~/.cache/braze/hpm``) and start background retraining in every
worker.  Each test process gets a history of its own instead, and sessions record only where a
test passes ``record=True``.
"""

import atexit
import os
import shutil
import tempfile

_history_dir = tempfile.mkdtemp(prefix="braze-test-history-")
atexit.register(shutil.rmtree, _history_dir, True)     # one per test process; the suite left 70 behind
os.environ["BRAZE_HISTORY"] = os.path.join(_history_dir, "history.sqlite")
os.environ["BRAZE_HPM_RECORD"] = "0"
# Plans the suite compares (golden against RTL, fused against unfused) come from one cost model, the
# analytic one, whatever learned model the machine has; tests of the learned path ask for it.
os.environ["BRAZE_COST_MODEL"] = "analytic"


def pytest_collection_finish(session):
    """Under ``--dist loadgroup`` every test marked ``xdist_group`` must carry its group in its id
    (pytest-xdist sends a group to one worker by that suffix); pytest 9.2 with pytest-xdist 3.8 lost
    the suffix, so the groups' shared builds and fixtures ran once per worker without a word."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    lost = [item.nodeid for item in session.items
            if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if lost:
        raise RuntimeError(f"pytest-xdist ignores the xdist_group of {len(lost)} tests (e.g. {lost[0]}) with "
                           f"this pytest; install the versions pyproject.toml pins")
