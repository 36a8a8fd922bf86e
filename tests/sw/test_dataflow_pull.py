"""``pull-elementwise``: a then branch of int8-exact element-wise ops pulled onto the chip while it is hot.

The early-exit encoder (:func:`~braze.sw.runtime.dataflow_models.exit_encoder_cnn`) exits through one
``MaxPool`` on the stem's feature map, which the static plan keeps on the host.  Trained with torch once
per machine and cached; golden device, the analytic cost model.
"""

import numpy as np
import pytest

from braze.sw.runtime.dataflow import PULL_ELEMENTWISE, DataflowSession
from braze.sw.runtime.dataflow_models import calibration_feeds, early_exit_cnn, exit_encoder_cnn, inputs

pytest.importorskip("torch")


def _session(model, **options):
    return DataflowSession(model.onnx_bytes, calibration=calibration_feeds(model), background=False,
                           cost_model="analytic", **options)


def test_pull_is_taken_while_exits_are_hot_and_reversed_when_they_go_cold():
    model = exit_encoder_cnn()
    feeds = inputs(model, "easy", 24, seed=7) + inputs(model, "hard", 24, seed=7)
    with _session(model, analyzer=False) as static:
        expected = [static.run(None, feed)[0] for feed in feeds]
        exits = [trace.partitions[-1] == "then" for trace in static.traces]
        static_bytes = {trace.transfer_bytes for trace, out in zip(static.traces, exits, strict=True) if out}
    exit_feeds = [feed for feed, out in zip(feeds, exits, strict=True) if out]
    stay_feeds = [feed for feed, out in zip(feeds, exits, strict=True) if not out]
    assert len(exit_feeds) >= 12 and len(stay_feeds) >= 16
    with _session(model, half_life=4.0) as session:
        assert session.pull_unavailable is None
        for feed in exit_feeds[:12]:
            session.run(None, feed)
        assert PULL_ELEMENTWISE in session.plan.choices
        first = len(session.traces)
        pulled = [session.run(None, feed)[0] for feed in exit_feeds[:4]]
        # An exit runs one partition (pre+then on chip), no host partition, and moves fewer bytes.
        for trace in session.traces[first:]:
            assert trace.partitions == ["pre+then"]
            assert trace.transfer_bytes < min(static_bytes)
        for feed in stay_feeds[:16]:
            session.run(None, feed)
        assert PULL_ELEMENTWISE not in session.plan.choices
        assert any(PULL_ELEMENTWISE in event.reversed for event in session.events)
        report = session.report()
        outputs = [session.run(None, feed)[0] for feed in feeds]
    assert "take pull-elementwise" in report and "reverse pull-elementwise" in report
    index = {id(feed): i for i, feed in enumerate(feeds)}
    for feed, value in zip(exit_feeds[:4], pulled, strict=True):     # identical to the static plan's
        assert np.array_equal(value, expected[index[id(feed)]])
    assert all(np.array_equal(a, b) for a, b in zip(outputs, expected, strict=True))


def test_pull_is_not_offered_for_a_then_branch_that_computes_nothing():
    with _session(early_exit_cnn(), analyzer=False) as session:     # its exit branch is an Identity
        assert "computes nothing" in session.pull_unavailable
        assert "pull-elementwise: not offered" in session.report()
