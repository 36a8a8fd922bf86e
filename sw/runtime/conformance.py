"""onnx's backend node tests through the Braze backend: how much of ONNX Braze runs by itself.

onnx ships one small model per operator behaviour (1,884 "node tests" in onnx 1.23), each with
inputs and expected outputs.  :func:`run_node_tests` runs them through
:class:`~braze.sw.runtime.backend.BrazeBackend` on the golden device and compares outputs as
onnx's own test runner does (same tolerances, dtypes and shapes).

*Strict* (the default) loads every model with ``allow_fallback=False`` and forbids the CPU
fallback to onnx's ``ReferenceEvaluator`` outright, so a case passes only on Braze's own code:
the frontend's numpy evaluator (:mod:`braze.sw.compiler.host_ops`) and the accelerator's kernels.
A failing case gets a *group* (why it failed: the unsupported operator, a refused attribute, a
wrong result, ...) so that the remaining work can be counted by cause.

``python -m braze.sw.runtime.conformance [--fallback] [--pattern REGEX] [--failures]`` prints the
groups and ends with one line ``node_tests: passed=<n> total=<n> strict=<0|1> seconds=<s>``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import re
import signal
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from braze.isa.errors import BrazeError

__all__ = ["NodeTestResult", "NodeTestSummary", "node_test_cases", "run_node_test", "run_node_tests",
           "StrictModeViolation", "main"]

#: Seconds a single node test may take before it counts as failed ("timeout").
CASE_TIMEOUT = 60


class StrictModeViolation(BrazeError):
    """A strict run reached onnx's ReferenceEvaluator: the case did not run on Braze's own code."""


@dataclasses.dataclass(frozen=True)
class NodeTestResult:
    """One node test: ``passed``, else ``group`` (the cause, for counting) and ``detail``."""

    name: str
    passed: bool
    group: str = ""
    detail: str = ""
    seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class NodeTestSummary:
    results: tuple[NodeTestResult, ...]
    strict: bool
    seconds: float

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def total(self) -> int:
        return len(self.results)

    def groups(self) -> list[tuple[str, int]]:
        """Failure groups, most frequent first."""
        counts = collections.Counter(r.group for r in self.results if not r.passed)
        return counts.most_common()

    def table(self, limit: int = 60) -> str:
        lines = [f"{'failures':>8}  group", f"{'-' * 8}  {'-' * 60}"]
        for group, count in self.groups()[:limit]:
            lines.append(f"{count:>8}  {group}")
        rest = self.groups()[limit:]
        if rest:
            lines.append(f"{sum(c for _, c in rest):>8}  ({len(rest)} more groups)")
        return "\n".join(lines)

    def summary_line(self) -> str:
        return (f"node_tests: passed={self.passed} total={self.total} strict={int(self.strict)} "
                f"seconds={self.seconds:.1f}")


def node_test_cases(pattern: str | None = None) -> list[Any]:
    """onnx's node test cases (``onnx.backend.test.case.test_case.TestCase``), optionally filtered by name."""
    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = load_model_tests(kind="node")
    if pattern:
        regex = re.compile(pattern)
        cases = [case for case in cases if regex.search(case.name)]
    return sorted(cases, key=lambda case: case.name)


@contextlib.contextmanager
def _reference_forbidden() -> Iterator[None]:
    """Make any use of the ReferenceEvaluator fallback fail (strict runs count Braze's own code only)."""
    from braze.sw.compiler import frontend

    original = frontend._run_reference

    def refuse(node, args):
        raise StrictModeViolation(f"node {node.name!r} ({node.qualified_op}) reached onnx's "
                                  "ReferenceEvaluator")

    frontend._run_reference = refuse
    try:
        yield
    finally:
        frontend._run_reference = original


@contextlib.contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    def expire(signum, frame):
        raise TimeoutError(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


_NUMBERS = re.compile(r"\d+")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def _group(error: BaseException) -> str:
    """A failure's cause with the case-specific parts (names, numbers) removed, for counting."""
    from braze.sw.compiler.frontend import UnsupportedOperator

    if isinstance(error, UnsupportedOperator):
        reason = str(error).split(": ", 1)[1] if ": " in str(error) else ""
        reason = "" if "allow_fallback" in reason else _NUMBERS.sub("N", reason)[:80]
        return f"unsupported {error.op_type}" + (f": {reason}" if reason else "")
    if isinstance(error, StrictModeViolation):
        op = re.search(r"\(([^)]*)\) reached", str(error))
        return f"reference evaluator needed for {op.group(1) if op else '?'}"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, AssertionError):
        if "incorrect shape" in str(error) or "shape mismatch" in str(error):
            return "wrong result: shape"
        if "dtype" in str(error) or "Items are not equal" in str(error):
            return "wrong result: dtype or value"
        return "wrong result: values"
    text = _QUOTED.sub("X", text)
    text = _NUMBERS.sub("N", text)
    return f"{type(error).__name__}: {text[:110]}"


def run_node_test(case: Any, *, strict: bool = True, timeout: int = CASE_TIMEOUT) -> NodeTestResult:
    """Run one node test case through the Braze backend and compare with onnx's expected outputs."""
    from onnx.backend.test.runner import Runner

    from .backend import BrazeBackend

    started = time.perf_counter()
    guard = _reference_forbidden() if strict else contextlib.nullcontext()
    try:
        with guard, _time_limit(timeout), warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            rep = BrazeBackend.prepare(case.model, "CPU", allow_fallback=not strict)
            for inputs, expected in case.data_sets:
                inputs = [_as_array(value) for value in inputs]
                expected = [_as_array(value) for value in expected]
                outputs = list(rep.run(inputs))
                Runner.assert_similar_outputs(expected, outputs, rtol=case.rtol, atol=case.atol)
    except Exception as error:      # every failure is a result to count, whatever its type
        return NodeTestResult(case.name, False, _group(error), f"{type(error).__name__}: {error}"[:400],
                              time.perf_counter() - started)
    return NodeTestResult(case.name, True, seconds=time.perf_counter() - started)


def _as_array(value: Any) -> Any:
    import onnx

    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    return value


def run_node_tests(cases: Sequence[Any] | None = None, *, strict: bool = True,
                   pattern: str | None = None) -> NodeTestSummary:
    """Run node test cases (all of onnx's, or those matching ``pattern``) and summarise them."""
    started = time.perf_counter()
    cases = node_test_cases(pattern) if cases is None else list(cases)
    results = tuple(run_node_test(case, strict=strict) for case in cases)
    return NodeTestSummary(results, strict, time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m braze.sw.runtime.conformance", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--fallback", action="store_true",
                        help="allow the ReferenceEvaluator fallback (default: strict, Braze's own code only)")
    parser.add_argument("--pattern", help="only cases whose name matches this regular expression")
    parser.add_argument("--failures", action="store_true", help="list every failing case with its error")
    parser.add_argument("--groups", type=int, default=60, help="how many failure groups to print")
    args = parser.parse_args(argv)
    summary = run_node_tests(strict=not args.fallback, pattern=args.pattern)
    if args.failures:
        for result in summary.results:
            if not result.passed:
                print(f"{result.name}: [{result.group}] {result.detail}")
    print(summary.table(args.groups))
    slow = sorted(summary.results, key=lambda r: -r.seconds)[:5]
    print("slowest: " + ", ".join(f"{r.name} {r.seconds:.1f}s" for r in slow))
    print(summary.summary_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
