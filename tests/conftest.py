"""Suite-wide settings: a private performance history, and no recording unless a test asks for it.

Sessions record their runs in the performance history by default; the suite's runs would fill
the developer's own history (``~/.cache/braze/hpm``) and start background retraining in every
worker.  Each test process gets a history of its own instead, and sessions record only where a
test passes ``record=True``.
"""

import os
import tempfile

os.environ["BRAZE_HISTORY"] = os.path.join(tempfile.mkdtemp(prefix="braze-test-history-"), "history.sqlite")
os.environ["BRAZE_HPM_RECORD"] = "0"
