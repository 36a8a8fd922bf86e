"""Codelets on a real Dask LocalCluster: 2 worker processes, one run, a codelet error, a worker killed.

One cluster for the module (starting one takes seconds); its workers are processes, so that killing
one is real.
"""

import os
import signal
import textwrap

import numpy as np
import pytest
from distributed import Future

from braze.sw.fleet import (
    CodeletError,
    DmdaScheduler,
    HistoryModel,
    StaticScheduler,
    compose_and_execute,
    connect,
    decompose,
    execute,
    monitor,
    run_programs,
)
from braze.sw.fleet.bench import compare
from braze.sw.fleet.execute import workers_of
from braze.sw.hpm import HistoryStore

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("braze-fleet-cluster")]

SCRIPT = textwrap.dedent('''\
    import hashlib
    import time
    import numpy as np

    def layer(x, w):
        return np.maximum(x @ w, 0.0)

    rng = np.random.default_rng(7)
    x = rng.standard_normal((24, 40))
    w = rng.standard_normal((40, 12))
    h = layer(x, w)
    digest = hashlib.sha256(x.tobytes()).hexdigest()
    time.sleep({sleep})
    total = float(h.sum())
    print("digest", digest[:12])
''')


@pytest.fixture(scope="module")
def client():
    with connect() as client:
        yield client


def _reference(source):
    namespace = {"print": lambda *args: None, "__name__": "reference"}
    exec(compile(source, "reference.py", "exec"), namespace)
    return namespace


def test_a_script_runs_on_the_fleets_with_int8_products_and_its_history_is_recorded(client, tmp_path):
    source = SCRIPT.format(sleep=0.0)
    program = decompose(source, filename="script.py", tolerance=0.05)
    history = HistoryStore(tmp_path / "history.sqlite")
    # Static routing sends the matrix codelet to the heavy fleet's accelerator.
    result = execute(program, StaticScheduler(HistoryModel(history)), client=client, history=history)
    reference = _reference(source)
    assert result.values["digest"] == reference["digest"]
    assert result.stdout == f"digest {reference['digest'][:12]}\n"
    scale = np.abs(reference["h"]).max()
    assert 0 < np.abs(result.values["h"] - reference["h"]).max() <= 0.05 * scale     # int8, in tolerance
    matmul = next(r for r in result.records.values() if r.pattern == "matmul")
    assert matmul.version == "accel-default" and matmul.worker == "heavy-0" and matmul.cycles > 0
    assert matmul.fleet == "heavy" and matmul.line == 11
    sleep = next(r for r in result.records.values() if r.line == 13)
    assert (sleep.pattern, sleep.fleet, sleep.worker) == ("io", "memory", "fast-0")
    assert "accel-default" in result.table() and "static: matrix work to the heavy fleet" in result.table()
    # Every codelet's run is in the performance history, and monitor() reads it.
    runs = history.codelet_runs()
    assert len(runs) == len(program.codelets) and {r.program for r in runs} == {"script.py"}
    metrics = monitor(matmul.codelet, "heavy", history=history)
    assert metrics.runs == 1 and metrics.errors == 0 and metrics.mean_seconds == pytest.approx(matmul.seconds)
    assert 0 < metrics.utilisation <= 1
    # Without a tolerance the same script is exact, everywhere on the CPU.
    exact = compose_and_execute(source, client=client, scheduler="adaptive", history=history)
    assert np.array_equal(exact.values["h"], reference["h"])
    assert all(r.version == "cpu" for r in exact.records.values())


def test_the_workers_are_asked_of_the_scheduler_not_the_clients_cache(client, monkeypatch):
    # The client's periodic refresh leaves a cache without per-worker information, and it can land
    # between scheduler_info()'s fetch and its return: the driver then saw no workers at all.
    monkeypatch.setattr(client, "scheduler_info", lambda **kwargs: {"workers": {}})
    workers = workers_of(client)
    assert [(w.name, w.nthreads) for w in workers] == [("fast-0", 1), ("heavy-0", 1)]
    assert workers[1].resources["accel-tiny"] == 1 and "heavy" in workers[1].fleets


def test_a_codelet_that_raises_on_a_worker_names_the_codelet_and_its_line(client, tmp_path):
    history = HistoryStore(tmp_path / "history.sqlite")
    program = decompose("import numpy as np\nh = np.zeros(3)\nbad = h[7]\n", filename="broken.py")
    with pytest.raises(CodeletError, match=r"^codelet c1 \(broken\.py:3: bad = h\[7\]\) raised IndexError"):
        execute(program, DmdaScheduler(HistoryModel(history), group=False), client=client, history=history)
    (failed,) = [run for run in history.codelet_runs() if run.error]
    assert failed.codelet == "c1" and "IndexError" in failed.error
    # The adaptive policy groups the two cheap statements: the error names the statement in its group.
    with pytest.raises(CodeletError, match=r"^codelet c1 \(in group c0\) \(broken\.py:3: bad = h\[7\]\) "
                                           r"raised IndexError"):
        execute(program, "adaptive", client=client, history=history)


def test_a_worker_killed_mid_run_loses_no_result_and_changes_none(client, tmp_path):
    programs = [decompose(SCRIPT.format(sleep=0.3).replace("default_rng(7)", f"default_rng({seed})"),
                          filename=f"p{seed}.py", name=f"p{seed}") for seed in range(6)]
    history = HistoryStore(tmp_path / "history.sqlite")
    reference = run_programs(client, [(p, None) for p in programs], DmdaScheduler(HistoryModel(history)))
    pids = client.run(os.getpid)
    victim = next(pid for address, pid in pids.items()
                  if address == next(w.address for w in workers_of(client) if w.name == "fast-0"))
    killed = []

    def kill(done_programs, done_codelets):
        if not killed and done_programs >= 1:       # others are mid-run: 3 in flight, sleeping on fast-0
            killed.append(done_codelets)
            os.kill(victim, signal.SIGKILL)

    run = run_programs(client, [(p, None) for p in programs], DmdaScheduler(HistoryModel(history)),
                       window=3, on_event=kill)
    assert killed, "the kill did not happen"
    assert compare(reference, run) == (0, 0)
    assert [e.program.name for e in run] == [p.name for p in programs]
    for seed, execution in enumerate(run):
        expected = _reference(SCRIPT.format(sleep=0).replace("default_rng(7)", f"default_rng({seed})"))
        assert execution.values["digest"] == expected["digest"]
        assert np.array_equal(execution.values["h"], expected["h"])


LAYERED = textwrap.dedent('''\
    import time
    import numpy as np

    def layer(x, w):
        time.sleep(0.25)
        return np.maximum(x @ w, 0.0)

    rng = np.random.default_rng({seed})
    x = rng.standard_normal((24, 40))
    w = rng.standard_normal((40, 12))
    h = layer(x, w)
    total = float(h.sum())
''')


def test_tasks_the_scheduler_forgets_mid_run_are_placed_again_and_no_result_changes(client, tmp_path):
    """The scheduler cancels tasks under the driver (as it does to a scattered result lost with its
    worker, and to everything that reads it: "already forgotten"): the driver scatters their inputs
    again and places them afresh, the reason recorded, every output the same as an undisturbed run."""
    programs = [decompose(LAYERED.format(seed=seed), filename=f"f{seed}.py", name=f"f{seed}",
                          tolerance=0.05) for seed in range(4)]
    history = HistoryStore(tmp_path / "h.sqlite")
    reference = run_programs(client, [(p, None) for p in programs], StaticScheduler(HistoryModel(history)))
    forgotten = []

    def forget(done_programs, done_codelets):
        if not forgotten and done_programs >= 1:
            keys = [k for keys in client.processing().values() for k in keys if str(k).startswith("codelet-")]
            if keys:
                forgotten.extend(keys)
                client.cancel([Future(k, client) for k in keys], force=True, reason="forgotten by the test")

    run = run_programs(client, [(p, None) for p in programs], StaticScheduler(HistoryModel(history)),
                       window=4, on_event=forget)
    assert forgotten, "no task was in flight to forget"
    assert [e.program.name for e in run] == [p.name for p in programs]
    assert compare(reference, run) == (0, 0)
    retried = [r for e in run for r in e.records.values() if r.retry is not None]
    assert retried and all("the scheduler cancelled its task (forgotten by the test)" in r.retry
                           for r in retried)
    assert len(retried) == len(forgotten)          # each forgotten task placed again, once
    for seed, execution in enumerate(run):
        expected = _reference(LAYERED.format(seed=seed).replace("time.sleep(0.25)", "pass"))
        assert np.abs(execution.values["h"] - expected["h"]).max() <= 0.05 * np.abs(expected["h"]).max()


def test_the_heavy_worker_killed_mid_run_its_int8_codelets_move_to_the_cpu_and_no_result_is_lost(
        client, tmp_path):
    """SIGKILL of the accelerator worker while int8 codelets are running and queued on its device:
    the driver sees it leave the scheduler and places them again -- no other worker has a device,
    so in their CPU (float) version, the reason recorded -- and every output is within the
    contract's tolerance of the exact result (the CPU route is exactly the float one)."""
    tolerance = 0.05
    programs = [decompose(LAYERED.format(seed=seed), filename=f"l{seed}.py", name=f"l{seed}",
                          tolerance=tolerance) for seed in range(5)]
    heavy = next(w for w in workers_of(client) if w.name == "heavy-0")
    victim = client.run(os.getpid)[heavy.address]
    killed = []

    def kill(done_programs, done_codelets):
        if not killed and done_programs >= 1:       # the others' products are on (or queued for) the device
            killed.append(done_codelets)
            os.kill(victim, signal.SIGKILL)

    run = run_programs(client, [(p, None) for p in programs],
                       StaticScheduler(HistoryModel(HistoryStore(tmp_path / "h.sqlite"))), window=5,
                       on_event=kill)
    assert killed, "the kill did not happen"
    assert [e.program.name for e in run] == [p.name for p in programs]          # nothing lost
    moved = []
    for seed, execution in enumerate(run):
        expected = _reference(LAYERED.format(seed=seed).replace("time.sleep(0.25)", "pass"))
        record = next(r for r in execution.records.values() if r.pattern == "matmul")
        scale = np.abs(expected["h"]).max()
        assert np.abs(execution.values["h"] - expected["h"]).max() <= tolerance * scale
        assert execution.values["total"] == float(execution.values["h"].sum())
        if record.retry is not None:
            moved.append(record)
            assert "heavy-0" in record.retry and "left the scheduler" in record.retry
            assert record.version == "cpu" and record.worker != "heavy-0"
            assert np.array_equal(execution.values["h"], expected["h"])       # the float version
            assert "retry: worker heavy-0" in execution.table()
        else:
            assert record.version == "accel-default" and record.cycles > 0
    assert moved, "no int8 codelet was in flight on the killed worker"
    assert len(moved) < len(programs)       # the first program's ran on the device before the kill


def test_the_heavy_worker_retired_for_good_mid_run_its_codelets_finish_on_the_cpu(client, tmp_path):
    """The accelerator worker leaves the scheduler and never comes back (retired, its nanny closed):
    what was placed on its devices is placed again on the CPU, later matrix codelets go to the CPU
    (no device is left), and nothing is lost.  (The last test of the module's cluster.)"""
    programs = [decompose(LAYERED.format(seed=seed), filename=f"r{seed}.py", name=f"r{seed}",
                          tolerance=0.05) for seed in range(6)]
    heavy = next(w for w in workers_of(client) if w.name == "heavy-0")
    retired = []

    def retire(done_programs, done_codelets):
        if not retired and done_programs >= 1:
            retired.append(done_codelets)
            client.retire_workers([heavy.address], close_workers=True, remove=True)

    run = run_programs(client, [(p, None) for p in programs],
                       StaticScheduler(HistoryModel(HistoryStore(tmp_path / "h.sqlite"))), window=4,
                       on_event=retire)
    assert retired and [w.name for w in workers_of(client)] == ["fast-0"]
    assert [e.program.name for e in run] == [p.name for p in programs]
    records = [next(r for r in e.records.values() if r.pattern == "matmul") for e in run]
    assert any(r.retry and "heavy-0" in r.retry for r in records)
    assert records[-1].version == "cpu" and records[-1].retry is None          # placed after: no device
    assert "no accelerator in the fleets" in records[-1].reason
    for seed, execution in enumerate(run):
        expected = _reference(LAYERED.format(seed=seed).replace("time.sleep(0.25)", "pass"))
        scale = np.abs(expected["h"]).max()
        assert np.abs(execution.values["h"] - expected["h"]).max() <= 0.05 * scale


def test_fleets_talk_tls_and_refuse_a_client_without_the_cluster_certificates(tmp_path, capsys):
    """With ``security`` every link (client, scheduler, workers) is TLS with the cluster's
    certificates (here a temporary self-signed set, written to PEM files as a real cluster's would
    be): the program runs, ``braze fleet run --scheduler tls://... --tls-*`` too, and a client
    without them cannot connect, so nothing from outside the cluster is ever deserialised."""
    from distributed.security import Security

    from braze.cli import main
    from braze.sw.fleet import FleetError

    temporary = Security.temporary()
    (tmp_path / "ca.pem").write_text(temporary.tls_ca_file)
    (tmp_path / "key.pem").write_text(temporary.tls_client_key)
    files = {"tls_ca_file": str(tmp_path / "ca.pem")} | {
        f"tls_{role}_{part}": str(tmp_path / f"{'ca' if part == 'cert' else 'key'}.pem")
        for role in ("client", "scheduler", "worker") for part in ("cert", "key")}
    security = Security(require_encryption=True, **files)
    source = "import numpy as np\nx = np.arange(12.0).reshape(3, 4)\ny = x @ x.T\ntotal = float(y.sum())\n"
    script = tmp_path / "script.py"
    script.write_text(source + "print('total', total)\n")
    with connect(security=security) as client:
        address = client.scheduler.address
        assert address.startswith("tls://")
        assert all(info.address.startswith("tls://") for info in workers_of(client))
        run = compose_and_execute(source, client=client, scheduler="cpu",
                                  history=HistoryStore(tmp_path / "h.sqlite"))
        expected = np.arange(12.0).reshape(3, 4)
        assert run.values["total"] == float((expected @ expected.T).sum())
        with pytest.raises(FleetError, match="speaks TLS"):
            with connect(address):
                pass
        with pytest.raises(FleetError, match="certificate"):        # another self-signed set
            with connect(address, security=Security.temporary()):
                pass
        capsys.readouterr()
        assert main(["fleet", "run", str(script), "--scheduler", address, "--policy", "cpu", "--group",
                     "--history", str(tmp_path / "cli.sqlite"), "--tls-ca-file", files["tls_ca_file"],
                     "--tls-cert", files["tls_client_cert"], "--tls-key", files["tls_client_key"]]) == 0
        out = capsys.readouterr().out
        assert f"cluster: {address}" in out and f"total {float((expected @ expected.T).sum())}" in out
        assert "grouped: 4 statements -> 3 codelets" in out        # the matrix product alone


def test_a_fleet_with_a_verilator_device_runs_int8_products_on_the_rtl(tmp_path):
    """The heavy worker's ``accel-tiny`` simulated by Verilator (the cached tiny build): the int8
    product runs on the RTL and gives, bit for bit, what the golden model's device gives."""
    from braze.sw.fleet import WorkerSpec
    from braze.sw.fleet.worker import accelerator_matmul

    source = SCRIPT.format(sleep=0.0)
    program = decompose(source, filename="script.py", tolerance=0.05)
    workers = (WorkerSpec("heavy-0", {"cpu": 1, "accel-tiny": 1}),
               WorkerSpec("fast-0", {"cpu": 1, "memory": 1}))
    with connect(workers=workers, processes=False) as client:
        result = execute(program, StaticScheduler(HistoryModel()), client=client, device="verilator")
    record = next(r for r in result.records.values() if r.pattern == "matmul")
    assert (record.version, record.worker, record.fallback) == ("accel-tiny", "heavy-0", None)
    assert record.cycles > 0
    reference = _reference(source)
    golden = np.maximum(accelerator_matmul(reference["x"], reference["w"], accelerator="accel-tiny",
                                           tolerance=0.05, device="golden"), 0.0)
    assert np.array_equal(result.values["h"], golden)
