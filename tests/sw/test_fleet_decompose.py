"""Decomposition of programs into codelets: the def-use DAG, contracts, and what cannot be split."""

import pickle
import textwrap

import numpy as np
import pytest

from braze.sw.fleet import CodeletError, DecompositionError, FleetError, decompose
from braze.sw.fleet.worker import CodeletTask, run_codelet

SCRIPT = textwrap.dedent('''\
    import hashlib
    import numpy as np

    SCALE = 3

    def normalise(v):
        return v / SCALE

    a = np.arange(12.0).reshape(3, 4)
    b = np.ones((4, 2))
    c = a @ b
    d = normalise(a).sum()
    digest = hashlib.sha256(c.tobytes()).hexdigest()
    log = []
    log.append(d)
    print(digest[:8], d)
    total = c.sum() + d
    if total > 0:
        total = total * 2
    print(total)
''')


def test_a_script_becomes_a_dag_of_codelets_with_their_contracts():
    program = decompose(SCRIPT, filename="script.py")
    by_source = {c.source.splitlines()[0]: c for c in program.codelets}
    assert "import hashlib" in program.prelude and "def normalise" in program.prelude
    assert len(program.codelets) == 12          # every top-level statement but imports and defs

    c = by_source["c = a @ b"]
    assert (c.inputs, c.outputs, c.line) == (("a", "b"), ("c",), 11)
    assert c.deps == (by_source["a = np.arange(12.0).reshape(3, 4)"].id, by_source["b = np.ones((4, 2))"].id)
    # A call reads what the prelude function reads: normalise uses SCALE.
    d = by_source["d = normalise(a).sum()"]
    assert d.inputs == ("SCALE", "a") and d.calls == ("normalise",)
    # An in-place change makes the variable an output, read from its previous writer.
    append = by_source["log.append(d)"]
    assert append.outputs == ("log",) and append.mutates == ("log",)
    assert set(append.deps) == {by_source["log = []"].id, d.id}
    # Statements that print keep their order; a branch may keep the earlier value, so it reads it.
    first_print, second_print = by_source["print(digest[:8], d)"], by_source["print(total)"]
    assert first_print.effects and first_print.id in second_print.deps
    branch = by_source["if total > 0:"]
    assert "total" in branch.inputs and branch.cyclomatic == 2
    # Independent codelets share a level of the DAG: a and b and SCALE and log first.
    first_level = {program.codelet(i).source.split(" =")[0] for i in program.levels()[0]}
    assert first_level == {"SCALE", "a", "b", "log"}
    assert program.outputs == ("SCALE", "a", "b", "c", "d", "digest", "log", "total")


def _run_in_order(program, parameters=None):
    """Run every codelet in program order in this process: the values the program leaves."""
    results = {}
    for codelet in program.codelets:
        sources = []
        for name in codelet.inputs:
            writers = [d for d in codelet.deps if name in program.codelet(d).outputs]
            sources.append((name, codelet.deps.index(writers[-1]) if writers else -1))
        task = CodeletTask(program.name, codelet, program.prelude, tuple(sources))
        results[codelet.id] = run_codelet(task, parameters, *[results[d] for d in codelet.deps])
    return results


def test_codelets_run_apart_compute_what_the_script_computes():
    program = decompose(SCRIPT, filename="script.py")
    results = _run_in_order(program)
    namespace = {"print": lambda *args: None, "__name__": "script"}
    exec(compile(SCRIPT, "script.py", "exec"), namespace)
    last = {}
    for codelet in program.codelets:
        for name in codelet.outputs:
            last[name] = results[codelet.id].values[name]
    assert last["total"] == namespace["total"] and last["digest"] == namespace["digest"]
    assert last["log"] == namespace["log"]
    # The list the first codelet made was copied before the append changed it.
    made = next(c for c in program.codelets if c.source == "log = []")
    assert results[made.id].values["log"] == []
    printed = "".join(results[c.id].stdout for c in program.codelets)
    assert printed == f"{namespace['digest'][:8]} {namespace['d']}\n{namespace['total']}\n"


def test_a_generator_advanced_by_a_method_is_threaded_through_in_program_order():
    program = decompose("import numpy as np\nrng = np.random.default_rng(1)\nx = rng.normal(size=3)\n"
                        "y = rng.normal(size=3)\n")
    c1, c2, c3 = program.codelets
    assert c3.deps == (c2.id,) and c2.mutates == ("rng",)
    results = _run_in_order(program)
    reference = np.random.default_rng(1)
    reference.normal(size=3)
    assert list(results[c3.id].values["y"]) == list(reference.normal(size=3))     # the second draw


def test_a_function_is_decomposed_with_its_parameters_as_inputs():
    def pipeline(x, w):
        """A docstring is not a codelet."""
        h = x @ w
        y = [v * 2 for v in h.ravel()]
        return sum(y)

    program = decompose(pipeline, tolerance=0.05)
    assert program.parameters == ("x", "w") and program.outputs == ("__return__",)
    assert [c.inputs for c in program.codelets] == [("w", "x"), ("h",), ("y",)]
    assert program.codelets[0].line == pipeline.__code__.co_firstlineno + 2
    results = _run_in_order(program, {"x": np.eye(2), "w": np.full((2, 2), 3.0)})
    assert results[program.codelets[-1].id].values["__return__"] == 24.0


@pytest.mark.parametrize("source, line, message", [
    ("x = 1\nfrom os import *\n", 2, "import \\*"),
    ("x = 1\nglobal x\n", 2, "'global' at top level"),
    ("x = 1\ny = eval('x + 1')\n", 2, "eval\\(\\) reads or changes names"),
    ("import numpy as np\nnp.random.seed(0)\n", 2, "hidden random state"),
    ("print(x)\nx = 1\n", 1, "'x' is read before the program assigns it"),
    ("x = 1\ndef f():\n    global x\n    x = 2\nf()\n", 3, "rebinds 'x' through 'global'"),
    ("x = (1\n", 1, "syntax error"),
])
def test_what_cannot_be_decomposed_is_an_error_naming_file_and_line(source, line, message):
    with pytest.raises(DecompositionError, match=f"^prog.py:{line}: cannot decompose: .*{message}"):
        decompose(source, filename="prog.py")


def test_bad_arguments_are_clear_errors():
    with pytest.raises(FleetError, match="tolerance=2"):
        decompose("x = 1", tolerance=2)
    with pytest.raises(FleetError, match="not int"):
        decompose(3)


def test_a_codelet_that_raises_names_itself_and_its_line_and_survives_pickling():
    program = decompose("import numpy as np\n\ndef pick(h):\n    return h[1000]\n\nh = np.zeros(3)\n"
                        "bad = pick(h)\n", filename="prog.py")
    with pytest.raises(CodeletError) as caught:
        _run_in_order(program)
    message = str(caught.value)
    assert message.startswith("codelet c1 (prog.py:7: bad = pick(h) ... line 4: return h[1000]) "
                              "raised IndexError")
    assert str(pickle.loads(pickle.dumps(caught.value))) == message


def test_the_command_line_reports_a_script_it_cannot_decompose_in_one_line(tmp_path, capsys):
    from braze.cli import main

    script = tmp_path / "bad.py"
    script.write_text("x = 1\nfrom os import *\n")
    assert main(["fleet", "run", str(script)]) == 2
    error = capsys.readouterr().err
    assert error == (f"braze fleet: error: {script}:2: cannot decompose: 'from ... import *' hides which "
                     f"names the program defines\n")
    assert main(["bench", "fleet", "--programs", "10"]) == 2
    assert "at least 50 programs" in capsys.readouterr().err


def test_the_command_line_tls_files_missing_unreadable_or_not_pem_are_one_line_errors(tmp_path, capsys):
    from braze.cli import main

    script = tmp_path / "ok.py"
    script.write_text("x = 1\n")
    pem = tmp_path / "not.pem"
    pem.write_text("not a certificate\n")
    tls = ["--scheduler", "tls://127.0.0.1:1"]
    cases = [
        ([*tls, "--tls-ca-file", str(pem)], "TLS needs --tls-ca-file, --tls-cert, --tls-key: --tls-cert, "
                                            "--tls-key missing"),
        ([*tls, "--tls-ca-file", str(pem), "--tls-cert", str(pem), "--tls-key", str(tmp_path / "gone.pem")],
         f"--tls-key {tmp_path / 'gone.pem'}: cannot read it (No such file or directory)"),
        (["--scheduler", "tcp://127.0.0.1:1", "--tls-ca-file", str(pem), "--tls-cert", str(pem),
          "--tls-key", str(pem)], "--scheduler tcp://127.0.0.1:1: the --tls-* certificates are for a tls:// "
                                  "address"),
        ([*tls, "--tls-ca-file", str(pem), "--tls-cert", str(pem), "--tls-key", str(pem)],
         f"--tls-ca-file {pem}, --tls-cert {pem}, --tls-key {pem}: not a usable CA/certificate/key set"),
    ]
    for extra, message in cases:
        assert main(["fleet", "run", str(script), *extra]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"braze fleet: error: {message}") and error.count("\n") == 1, error


def _tiny_script(statements: int) -> str:
    """Many tiny statements, a list changed in place through an alias, prints, and one matrix product."""
    lines = ["import numpy as np", "", "def square(v):", "    return v * v", "", "v0 = 1"]
    for i in range(1, statements):
        lines.append(f"v{i} = (square(v{i - 1}) + {i}) % 1009")
        if i == statements // 2:
            lines += ["items = [v0, v1]", "alias = items", "alias.append(v2)", "items.append(-1)",
                      "print('half', v1, items, alias)", "m = np.arange(16.0).reshape(4, 4)",
                      "p = m @ m", f"w = float(p.sum()) + v{i}"]
    lines += [f"total = w + v{statements - 1}", "print('total', total)"]
    return "\n".join(lines) + "\n"


def _final_values(program, results):
    """The values the program leaves (its last writers'), arrays as lists (comparable with ==)."""
    last = {}
    for codelet in program.codelets:
        for name in codelet.outputs:
            value = results[codelet.id].values[name]
            last[name] = value.tolist() if isinstance(value, np.ndarray) else value
    return last


def test_tiny_statements_are_grouped_into_few_codelets_that_compute_the_same():
    from braze.sw.fleet import group_cheap

    program = decompose(_tiny_script(40), filename="tiny.py")
    assert len(program.codelets) == 50
    grouped = group_cheap(program, overhead=2e-3)
    # Cheap statements merge; the matrix product stays alone for the scheduler to place.
    assert len(grouped.codelets) == 3
    before, product, after = grouped.codelets
    assert product.source == "p = m @ m" and product.members == ()
    assert (before.line, len(before.members), before.inputs) == (6, 27, ())
    assert product.deps == (before.id,) and product.inputs == ("m",)
    assert after.deps == (before.id, product.id) and after.inputs == ("p", "v20") and after.effects
    assert {"items", "alias", "v0", "m"} <= set(before.outputs) and "total" in after.outputs
    ids = [c.id for c in grouped.codelets]
    assert all(dep in ids[:ids.index(c.id)] for c in grouped.codelets for dep in c.deps)       # a DAG
    # The same values and the same output as the statements run one by one.
    apart, together = _run_in_order(program), _run_in_order(grouped)
    assert _final_values(grouped, together) == _final_values(program, apart)
    final = _final_values(grouped, together)
    assert (final["items"], final["alias"]) == ([1, 2, -1], [1, 2, 6])      # an alias's append stays apart
    printed = "".join(r.stdout for r in together.values())
    assert printed == "".join(apart[c.id].stdout for c in program.codelets)
    assert printed.startswith("half 2 [1, 2, -1] [1, 2, 6]\n")
    # A smaller budget makes more, smaller groups, each within it.
    small = group_cheap(program, overhead=1e-4)
    assert len(grouped.codelets) < len(small.codelets) < len(program.codelets)
    assert _final_values(small, _run_in_order(small)) == _final_values(program, apart)


def test_a_grouped_statement_that_raises_names_itself_and_its_line():
    from braze.sw.fleet import group

    program = decompose("a = 1\nb = [a]\nc = b[5]\nd = 2\n", filename="g.py")
    grouped = group(program, lambda codelet: 1e-6, 1e-3)
    assert len(grouped.codelets) == 1
    with pytest.raises(CodeletError, match=r"^codelet c2 \(in group c0\) \(g\.py:3: c = b\[5\]\) raised "
                                           r"IndexError"):
        _run_in_order(grouped)
    with pytest.raises(FleetError, match="group budget 0"):
        group(program, lambda codelet: 1e-6, 0)
