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
