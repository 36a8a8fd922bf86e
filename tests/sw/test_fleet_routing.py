"""Pattern recognition, targeting profiles, the int8 accelerator version, and routing that learns."""

import ast
import dataclasses

import numpy as np
import pytest

from braze.sw.fleet import AcceleratorManager, DmdaScheduler, HistoryModel, StaticScheduler, decompose
from braze.sw.fleet.dispatch import Lease, Request, WorkerInfo, signature_of
from braze.sw.fleet.profile import accelerator_cycles, patterns_of, profile_codelet
from braze.sw.fleet.worker import accelerator_matmul
from braze.sw.hpm import HistoryStore


@pytest.mark.parametrize("code, pattern", [
    ("y = a @ b", "matmul"),
    ("y = np.dot(a, b)", "matmul"),
    ("y = np.einsum('ij,jk->ik', a, b)", "matmul"),
    ("y = np.convolve(a, k)", "conv"),
    ("y = scipy.signal.convolve2d(a, k)", "conv"),
    ("y = np.fft.rfft(a)", "fft"),
    ("y = hashlib.sha256(b).hexdigest()", "hash"),
    ("y = zlib.crc32(b)", "hash"),
    ("y = np.load(path)", "io"),
    ("y = open(path).read()", "io"),
    ("y = np.tanh(a) * 2", "elementwise"),
    ("y = [i for i in range(3)]", "scalar"),
])
def test_patterns_are_recognised(code, pattern):
    assert patterns_of(ast.parse(code))[0] == pattern


def test_patterns_inside_called_functions_count_and_the_most_specific_wins():
    program = decompose("import numpy as np\ndef layer(x, w):\n    return np.maximum(x @ w, 0)\n"
                        "x = np.ones((4, 8))\nw = np.ones((8, 2))\nh = layer(x, w)\n", tolerance=0.1)
    profile = profile_codelet(program, program.codelets[2], {"x": (4, 8), "w": (8, 2)})
    assert profile.pattern == "matmul" and "elementwise" in profile.patterns
    assert profile.matmul == (4, 8, 2)


def test_a_matrix_codelet_gets_an_accelerator_only_with_a_tolerance_and_where_it_pays():
    source = "import numpy as np\nx = np.ones((64, 128))\nw = np.ones((128, 64))\nh = x @ w\n"
    shapes = {"x": (64, 128), "w": (128, 64)}
    exact = decompose(source)
    profile = profile_codelet(exact, exact.codelets[2], shapes)
    assert profile.function_version == "cpu" and "no int8 tolerance" in profile.reason
    tolerant = decompose(source, tolerance=0.05)
    profile = profile_codelet(tolerant, tolerant.codelets[2], shapes)
    # Estimates of every target, gains relative to the CPU, transfers included.
    assert set(profile.estimates) == {"cpu", "accel-tiny", "accel-default"}
    estimates = profile.estimates
    assert profile.gains["accel-default"] == pytest.approx(estimates["cpu"] / estimates["accel-default"])
    best = min(profile.estimates, key=profile.estimates.get)
    assert profile.accelerator_type == best
    assert profile.estimated_execution_time == profile.estimates[best]
    # The bigger array needs fewer cycles for the same product (the timing model's estimate).
    assert accelerator_cycles("accel-default", 64, 128, 64)[0] < \
        accelerator_cycles("accel-tiny", 64, 128, 64)[0]


def test_the_int8_matmul_runs_on_a_braze_device_within_tolerance_or_falls_back():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((16, 24)), rng.standard_normal((24, 8))
    stats = {}
    result = accelerator_matmul(a, b, accelerator="accel-tiny", tolerance=0.05, stats=stats)
    reference = a @ b
    error = np.abs(result - reference).max() / np.abs(reference).max()
    assert 0 < error <= 0.05 and result.dtype == reference.dtype        # int8: close, not exact
    assert stats["calls"] == 1 and stats["cycles"] > 0 and "fallbacks" not in stats
    # A tolerance int8 cannot meet: the CPU's result, and the reason.
    stats = {}
    strict = accelerator_matmul(a, b, accelerator="accel-tiny", tolerance=1e-6, stats=stats)
    assert np.array_equal(strict, reference) and "over the tolerance" in stats["fallbacks"][0]
    # Integer operands stay exact on the CPU.
    stats = {}
    ints = accelerator_matmul(np.ones((2, 2), int), np.ones((2, 2), int), accelerator="accel-tiny",
                              tolerance=0.1, stats=stats)
    assert ints.tolist() == [[2, 2], [2, 2]] and "integer" in stats["fallbacks"][0]


WORKERS = [WorkerInfo("heavy-0", "tcp://h", {"cpu": 1, "accel-tiny": 1, "accel-default": 1}),
           WorkerInfo("fast-0", "tcp://f", {"cpu": 1, "memory": 2})]


def _request(program, index, shapes):
    codelet = program.codelets[index]
    profile = profile_codelet(program, codelet, shapes)
    return Request(program, codelet, profile, signature_of(codelet, shapes), {})


def test_the_accelerator_manager_leases_refuses_past_a_deadline_and_when_withheld():
    manager = AcceleratorManager(WORKERS)
    assert manager.kinds() == ("accel-default", "accel-tiny")
    lease = manager.request("accel-tiny", "p/c1", 0.5, deadline=0.1)
    assert isinstance(lease, Lease) and lease.worker == "heavy-0"
    refused = manager.request("accel-tiny", "p/c2", 0.5, deadline=0.1)
    assert isinstance(refused, str) and "no accel-tiny free within 0.1 s" in refused
    manager.release(lease, seconds=0.4, cycles=1000)
    assert isinstance(manager.request("accel-tiny", "p/c3", 0.5, deadline=0.1), Lease)
    stats = manager.stats["heavy-0", "accel-tiny"]
    assert (stats.runs, stats.cycles, stats.busy_seconds) == (1, 1000, 0.4) and stats.cost > 0
    assert AcceleratorManager(WORKERS, withheld=True).request("accel-tiny", "k", 0.1, deadline=9) == \
        "accelerators withheld"


def test_dmda_learns_from_measurements_and_static_does_not():
    program = decompose("import numpy as np\nx = np.ones((64, 128))\nw = np.ones((128, 64))\nh = x @ w\n",
                        tolerance=0.1)
    shapes = {"x": (64, 128), "w": (128, 64)}
    request = _request(program, 2, shapes)
    store = HistoryStore(":memory:")
    adaptive = DmdaScheduler(HistoryModel(store))
    adaptive.attach(WORKERS, AcceleratorManager(WORKERS))
    static = StaticScheduler(HistoryModel(store))
    static.attach(WORKERS, AcceleratorManager(WORKERS))
    # Before any measurement both follow the analytic estimates.
    first = adaptive.place(request)
    adaptive.finished(first, "k0")
    assert first.version == request.profile.function_version
    # Measurements: the accelerators are slow in wall time, the CPU fast.
    for kind in ("accel-tiny", "accel-default"):
        adaptive.model.observe(request.signature, kind, "matmul", 5.0, request.profile.estimates[kind])
    adaptive.model.observe(request.signature, "cpu", "matmul", 0.001, request.profile.estimates["cpu"])
    learned = adaptive.place(request)
    assert (learned.version, learned.predicted_seconds) == ("cpu", 0.001) and "history" in learned.reason
    assert static.place(request).version == "int8"          # static keeps its pattern rule
    # An unseen shape of the same pattern is scaled by what the pattern measured.
    other = _request(program, 2, {"x": (32, 128), "w": (128, 64)})
    expected, source = adaptive.model.expected(other.signature, "accel-tiny", "matmul",
                                               other.profile.estimates["accel-tiny"])
    assert source == "pattern-scaled" and expected > other.profile.estimates["accel-tiny"]


def test_dmda_balances_cpu_work_over_workers_by_expected_finish():
    program = decompose("import numpy as np\nx = np.ones(10)\ny = np.ones(10)\n")
    scheduler = DmdaScheduler(HistoryModel())
    scheduler.attach(WORKERS, AcceleratorManager(WORKERS))
    first = scheduler.place(_request(program, 0, {}))
    scheduler.submitted(first, "k1")
    second = scheduler.place(_request(program, 1, {}))
    assert {first.worker, second.worker} == {"heavy-0", "fast-0"}   # the first worker's queue is busy
    scheduler.finished(first, "k1")
    assert scheduler.place(_request(program, 1, {})).worker == first.worker


def test_dmda_counts_everything_in_flight_on_a_worker_against_its_threads():
    # One thread per worker runs its I/O, its CPU codelets and its simulated devices alike: a worker
    # busy with I/O (or with an accelerator lease) is busy for CPU work too.
    program = decompose("import numpy as np\nx = np.load('t.npy')\ny = np.ones(10)\nz = np.ones(10)\n")
    scheduler = DmdaScheduler(HistoryModel(), task_overhead=0.0)
    scheduler.attach(WORKERS, AcceleratorManager(WORKERS))
    for signature, seconds in (("io", 0.5), ("y", 0.01), ("z", 0.01)):
        scheduler.model.observe(signature, "cpu", "x", seconds, None)
    load = dataclasses.replace(_request(program, 0, {}), signature="io")
    placed = scheduler.place(load)
    assert (placed.worker, placed.resource) == ("fast-0", "memory")       # the memory fleet's I/O slot
    scheduler.submitted(placed, "load")
    assert scheduler.worker_wait(WORKERS[1]) == 0.5 and scheduler.worker_wait(WORKERS[0]) == 0.0
    cpu = scheduler.place(dataclasses.replace(_request(program, 1, {}), signature="y"))
    assert (cpu.worker, cpu.resource) == ("heavy-0", "cpu")     # fast-0's one thread is sleeping on I/O
    # A lease on heavy-0's device occupies heavy-0's thread: CPU work then goes to fast-0 (0.5 s < 2 s).
    scheduler.manager.request("accel-tiny", "p/c9", 2.0, deadline=1.0)
    assert scheduler.worker_wait(WORKERS[0]) == 2.0
    assert scheduler.place(dataclasses.replace(_request(program, 2, {}), signature="z")).worker == "fast-0"
    # Two threads halve the wait.
    assert scheduler.worker_wait(dataclasses.replace(WORKERS[0], nthreads=2)) == 1.0


def test_the_adaptive_policy_groups_cheap_codelets_against_the_task_overhead_and_static_does_not():
    program = decompose("import numpy as np\na = np.ones((8, 8))\nb = a + 1\nc = a @ b\nd = c * 2\n"
                        "e = d - 1\ntable = np.load('t.npy')\n", tolerance=0.1)
    assert len(program.codelets) == 6
    adaptive = DmdaScheduler(HistoryModel(), task_overhead=0.01)
    adaptive.attach(WORKERS, AcceleratorManager(WORKERS))

    def runs(grouped):
        return [[m.id for m in c.members] or [c.id] for c in grouped.codelets]

    grouped = adaptive.prepare(program)
    # a, b together; the matrix product alone (the accelerators may take it); d, e together; the I/O
    # alone (the memory fleet's).
    assert runs(grouped) == [["c0", "c1"], ["c2"], ["c3", "c4"], ["c5"]]
    assert adaptive.prepare(grouped) is grouped                    # grouped already: left as it is
    # Not attached to a cluster yet: accelerators may be there, the product stays alone.
    assert runs(DmdaScheduler(HistoryModel(), task_overhead=0.01).prepare(program)) == runs(grouped)
    # Without a tolerance (or without accelerators) the product can only run on a CPU: grouped too.
    exact = dataclasses.replace(program, tolerance=None)
    assert runs(adaptive.prepare(exact)) == [["c0", "c1", "c2", "c3", "c4"], ["c5"]]
    bare = DmdaScheduler(HistoryModel(), task_overhead=0.01)
    bare.attach([WORKERS[1]], AcceleratorManager([WORKERS[1]]))
    assert runs(bare.prepare(program)) == [["c0", "c1", "c2", "c3", "c4"], ["c5"]]
    # The budget caps a group's expected work: two codelets' worth (1 ms each, measured) per group.
    for index in range(5):
        adaptive.model.observe(signature_of(exact.codelets[index], {}), "cpu", "x", 0.001, None)
    tight = DmdaScheduler(adaptive.model, task_overhead=0.001, group_budget=2.0)
    assert runs(tight.prepare(exact)) == [["c0", "c1"], ["c2", "c3"], ["c4"], ["c5"]]
    # An overhead smaller than what a codelet is expected to cost: nothing to gain, nothing grouped.
    assert len(DmdaScheduler(HistoryModel(), task_overhead=1e-9).prepare(program).codelets) == 6
    assert DmdaScheduler(HistoryModel(), group=False, task_overhead=0.01).prepare(program) is program
    assert StaticScheduler(HistoryModel(), task_overhead=0.01).prepare(program) is program
