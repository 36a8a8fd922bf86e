"""Codelets: a Python program split into functionally independent pieces by def-use analysis.

A *program* is a script (a source string, a module, or a function whose body is the script).
Its imports and function/class definitions form the *prelude*, which every codelet runs after
(so the functions it calls exist); every other top-level statement is one codelet.  A codelet's
contract is what it reads (``inputs``), what it binds (``outputs``) and the codelets it needs
(``deps``: the last writer of each input, and, for statements with side effects -- ``print``,
files -- the previous such statement, so output keeps the program's order).  The dependencies
form a DAG in program order; codelets with no path between them may run in parallel.

Values move between codelets, never shared mutable state: a codelet that changes an input in
place (``a[i] = ...``, ``a += ...``, ``a.append(...)``) gets a copy and outputs the new value.

What cannot be decomposed is a :class:`DecompositionError` naming ``file:line``: ``global`` and
``nonlocal`` at top level or in a prelude function that rebinds a program variable, star imports,
``exec``/``eval``/``globals()``/``locals()``, ``yield``/``await`` at top level, and definitions
whose defaults or decorators use a program variable.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import hashlib
import inspect
import textwrap
import types
from collections.abc import Callable
from typing import Any

from braze.isa import BrazeError

__all__ = ["Codelet", "Program", "FleetError", "DecompositionError", "CodeletError", "decompose", "group"]

_BUILTINS = frozenset(dir(builtins))
#: Calls that read or write the interpreter's namespaces: their effect cannot be known statically.
_DYNAMIC_CALLS = frozenset({"exec", "eval", "globals", "locals", "vars", "__import__"})
#: Calls whose effect is outside the program (output, files): such statements keep their order.
_EFFECT_CALLS = frozenset({"print", "open", "input"})
#: Methods known not to change their object.  Any other method called on a program variable may
#: (``rng.normal()`` advances a generator, ``h.update()`` a hash, ``a.sort()`` an array): the
#: variable becomes an output, so that later statements see the changed object, in program order.
_PURE_METHODS = frozenset({
    "sum", "mean", "std", "var", "min", "max", "argmin", "argmax", "argsort", "reshape", "astype", "copy",
    "tobytes", "ravel", "flatten", "transpose", "dot", "round", "any", "all", "item", "tolist", "cumsum",
    "prod", "clip", "nonzero", "squeeze", "view", "conj", "hexdigest", "digest", "encode", "decode", "split",
    "rsplit", "join", "strip", "lstrip", "rstrip", "lower", "upper", "replace", "startswith", "endswith",
    "format", "keys", "values", "items", "get", "count", "index", "find", "splitlines", "isdigit",
    "bit_length", "to_bytes", "__len__"})
#: Modules whose functions keep hidden state in the process (a codelet on another worker would not
#: see it): ``random.*`` and numpy's legacy ``np.random.*`` (a ``Generator`` is fine: it is a value).
_STATEFUL_RANDOM = frozenset({"seed", "rand", "randn", "randint", "random", "choice", "shuffle", "normal",
                              "uniform", "permutation", "random_sample", "sample", "gauss", "randrange",
                              "getrandbits", "standard_normal", "binomial", "poisson", "exponential"})


class FleetError(BrazeError):
    """An error of the fleet layer (decomposition, routing, execution)."""


class DecompositionError(FleetError):
    """A program construct the decomposer cannot split safely, located by ``file:line``."""

    def __init__(self, message: str, *, file: str, line: int):
        self.message = message
        self.file = file
        self.line = line
        super().__init__(f"{file}:{line}: cannot decompose: {message}")

    def __reduce__(self):
        return _rebuild_decomposition_error, (self.message, self.file, self.line)


class CodeletError(FleetError):
    """A codelet raised: names the codelet, its source line and the original error."""

    def __init__(self, codelet: str, file: str, line: int, source_line: str, error: str):
        self.codelet = codelet
        self.file = file
        self.line = line
        self.source_line = source_line
        self.error = error
        super().__init__(f"codelet {codelet} ({file}:{line}: {source_line.strip()}) raised {error}")

    def __reduce__(self):           # it crosses from the worker to the client pickled
        return CodeletError, (self.codelet, self.file, self.line, self.source_line, self.error)


def _rebuild_decomposition_error(message: str, file: str, line: int) -> DecompositionError:
    return DecompositionError(message, file=file, line=line)


@dataclasses.dataclass(frozen=True)
class Codelet:
    """One top-level statement of a program with its contract.

    Attributes
    ----------
    id : str
        ``c<index>`` in program order (``c0``, ``c1``, ...).
    source : str
        The statement's source text (dedented).
    file, line, end_line : str, int, int
        Where it is in the program.
    inputs, outputs : tuple[str, ...]
        Program variables it reads (including those its called functions read) and binds.
    mutates : tuple[str, ...]
        Inputs it changes in place (copied before it runs).
    deps : tuple[str, ...]
        Ids of the codelets it depends on.
    calls : tuple[str, ...]
        Prelude functions it calls, directly or through other prelude functions.
    effects : bool
        It prints or opens files: ordered after the previous codelet with effects.
    cyclomatic : int
        McCabe complexity of the statement and the prelude functions it calls.
    size : int
        AST nodes of the statement and the prelude functions it calls.
    members : tuple[Codelet, ...]
        For a group of consecutive statements (:func:`group`): its statements' codelets, run in
        order in one task, each with its own contract (empty for one statement).
    """

    id: str
    source: str
    file: str
    line: int
    end_line: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    mutates: tuple[str, ...]
    deps: tuple[str, ...]
    calls: tuple[str, ...]
    effects: bool
    cyclomatic: int
    size: int
    members: tuple[Codelet, ...] = ()

    @property
    def complexity(self) -> float:
        """Cyclomatic complexity weighted by size: ``cyclomatic * (1 + size / 100)``."""
        return self.cyclomatic * (1.0 + self.size / 100.0)

    @property
    def code_hash(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Program:
    """A decomposed program: its prelude, its codelets in program order, and which names it outputs.

    Attributes
    ----------
    name : str
        The program's name (file name, function name, or ``<string>``).
    prelude : str
        Imports and definitions, run before each codelet (at their line numbers in the file: other
        lines are blank).
    codelets : tuple[Codelet, ...]
    outputs : tuple[str, ...]
        Names the program leaves bound at its end (a function's program: ``return`` values named
        ``__return__``).
    parameters : tuple[str, ...]
        A function's parameters: inputs that come from the caller.
    tolerance : float or None
        The relative error the user accepts for int8 accelerator versions (None: exact, CPU only).
    """

    name: str
    prelude: str
    codelets: tuple[Codelet, ...]
    outputs: tuple[str, ...]
    parameters: tuple[str, ...] = ()
    tolerance: float | None = None

    def codelet(self, codelet_id: str) -> Codelet:
        for codelet in self.codelets:
            if codelet.id == codelet_id:
                return codelet
        raise FleetError(f"program {self.name!r} has no codelet {codelet_id!r}; it has "
                         f"{', '.join(c.id for c in self.codelets)}")

    def levels(self) -> list[list[str]]:
        """Codelet ids by depth in the DAG: every codelet of a level may run in parallel."""
        depth: dict[str, int] = {}
        for codelet in self.codelets:
            depth[codelet.id] = 1 + max((depth[d] for d in codelet.deps), default=-1)
        levels: list[list[str]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
        for codelet_id, level in depth.items():
            levels[level].append(codelet_id)
        return levels


# --- Name analysis. --------------------------------------------------------------------------------
def _bound_in(node: ast.AST) -> set[str]:
    """Names a nested scope (lambda, comprehension, function) binds itself."""
    bound: set[str] = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store | ast.Del):
            bound.add(child.id)
        elif isinstance(child, ast.arg):
            bound.add(child.arg)
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and child is not node:
            bound.add(child.name)
        elif isinstance(child, ast.alias):
            bound.add((child.asname or child.name).split(".")[0])
    return bound


def _reads(node: ast.AST) -> set[str]:
    """Free names a node loads (names a nested scope binds itself excluded)."""
    reads: set[str] = set()

    def visit(current: ast.AST, local: frozenset[str]) -> None:
        if isinstance(current, ast.Lambda | ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
            local = local | _bound_in(current)
        if isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef) and current is not node:
            outer = [*current.decorator_list, *current.args.defaults, *filter(None, current.args.kw_defaults)]
            for part in outer:
                visit(part, local)
            local = local | _bound_in(current)
            for part in current.body:
                visit(part, local)
            return
        if isinstance(current, ast.Name) and isinstance(current.ctx, ast.Load) and current.id not in local:
            reads.add(current.id)
        for child in ast.iter_child_nodes(current):
            visit(child, local)

    visit(node, frozenset())
    return reads


def _target_names(target: ast.AST) -> tuple[set[str], set[str]]:
    """(names bound, names changed in place) by an assignment target."""
    bound: set[str] = set()
    changed: set[str] = set()
    if isinstance(target, ast.Name):
        bound.add(target.id)
    elif isinstance(target, ast.Tuple | ast.List):
        for element in target.elts:
            b, c = _target_names(element)
            bound |= b
            changed |= c
    elif isinstance(target, ast.Starred):
        return _target_names(target.value)
    elif isinstance(target, ast.Subscript | ast.Attribute):
        base = target.value
        while isinstance(base, ast.Subscript | ast.Attribute):
            base = base.value
        if isinstance(base, ast.Name):
            changed.add(base.id)
    return bound, changed


def _writes(statement: ast.stmt) -> tuple[set[str], set[str]]:
    """(names a statement binds at top level, names it changes in place)."""
    bound: set[str] = set()
    changed: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Lambda | ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp
                      | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                bound.add(node.name)
            return                      # their own bindings are local to them
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
            if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
                changed.add(node.target.id)     # ``a += b`` may change ``a`` in place (arrays, lists)
        elif isinstance(node, ast.For | ast.AsyncFor):
            targets = [node.target]
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            targets = [node.optional_vars]
        elif isinstance(node, ast.NamedExpr):
            targets = [node.target]
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.Delete):
            targets = list(node.targets)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr not in _PURE_METHODS:
            base = node.func.value
            while isinstance(base, ast.Subscript | ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name):
                changed.add(base.id)        # (module names are dropped later: not program variables)
        for target in targets:
            b, c = _target_names(target)
            bound.update(b)
            changed.update(c)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(statement)
    return bound, changed


def _called_names(node: ast.AST) -> set[str]:
    return {child.func.id for child in ast.walk(node)
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Name)}


def _cyclomatic(node: ast.AST) -> int:
    """McCabe complexity: 1 + decision points (branches, loops, handlers, boolean operators)."""
    decisions = 0
    for child in ast.walk(node):
        if isinstance(child, ast.If | ast.IfExp | ast.For | ast.AsyncFor | ast.While | ast.ExceptHandler
                      | ast.Assert | ast.match_case):
            decisions += 1
        elif isinstance(child, ast.BoolOp):
            decisions += len(child.values) - 1
        elif isinstance(child, ast.comprehension):
            decisions += 1 + len(child.ifs)
    return 1 + decisions


def _size(node: ast.AST) -> int:
    return sum(1 for _ in ast.walk(node))


# --- Decomposition. --------------------------------------------------------------------------------
def _source_of(program: Any, filename: str | None) -> tuple[str, str, int, tuple[str, ...], bool]:
    """(source, file name, first line, parameters, is_function) of a program."""
    if isinstance(program, str):
        return program, filename or "<string>", 1, (), False
    if isinstance(program, types.ModuleType):
        try:
            source = inspect.getsource(program)
        except (OSError, TypeError) as error:
            raise FleetError(f"module {program.__name__}: no source to decompose ({error})") from None
        return source, filename or getattr(program, "__file__", program.__name__), 1, (), False
    if isinstance(program, types.FunctionType):
        try:
            lines, first = inspect.getsourcelines(program)
        except (OSError, TypeError) as error:
            raise FleetError(f"function {program.__qualname__}: no source to decompose ({error})") from None
        tree = ast.parse(textwrap.dedent("".join(lines)))
        function = tree.body[0]
        if not isinstance(function, ast.FunctionDef):
            raise FleetError(f"{program.__qualname__}: only plain functions (def) can be decomposed")
        args = function.args
        if args.vararg or args.kwarg or args.kwonlyargs or args.posonlyargs:
            raise DecompositionError("only positional-or-keyword parameters are supported",
                                     file=inspect.getsourcefile(program) or "<function>", line=first)
        # The body's lines as they are (blank lines and comments kept, so line numbers map back).
        body = textwrap.dedent("".join(lines[function.body[0].lineno - 1:function.end_lineno]))
        file = filename or inspect.getsourcefile(program) or "<function>"
        return body, file, first + function.body[0].lineno - 1, tuple(a.arg for a in args.args), True
    raise FleetError(f"decompose() takes a source string, a module or a function, not "
                     f"{type(program).__name__}")


def decompose(program: str | types.ModuleType | Callable[..., Any], *, filename: str | None = None,
              name: str | None = None, tolerance: float | None = None) -> Program:
    """Split a program into codelets (see the module documentation).

    Parameters
    ----------
    program : str, module or function
        A script's source, a module, or a function (its body is the script; its parameters are
        inputs from the caller; ``return VALUE`` becomes the output ``__return__``).
    filename : str, optional
        The file name errors and codelets name (default: the module's or function's file).
    name : str, optional
        The program's name (default: the file name or the function's name).
    tolerance : float, optional
        Relative error the caller accepts in matrix results, which lets matrix codelets run in int8
        on an accelerator (checked against the CPU at run time; None: CPU only).

    Raises
    ------
    DecompositionError
        For a construct that cannot be split safely, naming ``file:line``.
    """
    if tolerance is not None and not 0.0 < tolerance < 1.0:
        raise FleetError(f"tolerance={tolerance!r}: must be a relative error in (0, 1), or None")
    source, file, first_line, parameters, is_function = _source_of(program, filename)
    try:
        tree = ast.parse(source, filename=file)
    except SyntaxError as error:
        raise DecompositionError(f"syntax error: {error.msg}", file=file,
                                 line=(error.lineno or 1) + first_line - 1) from None
    lines = source.splitlines()

    def where(node: ast.AST) -> int:
        return node.lineno + first_line - 1

    prelude_nodes: list[ast.stmt] = []
    statements: list[ast.stmt] = []
    for statement in tree.body:
        if isinstance(statement, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.AsyncFunctionDef
                      | ast.ClassDef):
            prelude_nodes.append(statement)
        elif not (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)):
            statements.append(statement)        # (docstrings and bare constants do nothing)
    prelude_names: set[str] = set()
    for node in prelude_nodes:
        if isinstance(node, ast.ImportFrom) and any(alias.name == "*" for alias in node.names):
            raise DecompositionError("'from ... import *' hides which names the program defines",
                                     file=file, line=where(node))
        prelude_names |= _bound_in(node) if isinstance(node, ast.Import | ast.ImportFrom) else {node.name}

    # Every program variable: what the statements bind, plus a function's parameters.
    variables = set(parameters)
    for statement in statements:
        variables |= _writes(statement)[0]
    clash = sorted(variables & prelude_names)
    if clash:
        node = next(n for n in prelude_nodes if (_bound_in(n) if isinstance(n, ast.Import | ast.ImportFrom)
                                                 else {n.name}) & set(clash))
        raise DecompositionError(f"{clash[0]!r} is both defined here and assigned by a statement of the "
                                 f"program", file=file, line=where(node))

    # Prelude functions: which program variables and other prelude functions each reads.
    function_reads: dict[str, set[str]] = {}
    mutated_params: dict[str, set[int]] = {}       # positions of the parameters a function changes
    function_nodes: dict[str, ast.AST] = {}
    for node in prelude_nodes:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            decorated = [*node.decorator_list]
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                decorated += node.args.defaults + [d for d in node.args.kw_defaults if d]
            else:
                decorated += node.bases
            for part in decorated:
                used = sorted(_reads(part) & variables)
                if used:
                    raise DecompositionError(f"the definition of {node.name!r} uses program variable "
                                             f"{used[0]!r} in a default, base or decorator",
                                             file=file, line=where(node))
            for child in ast.walk(node):
                if isinstance(child, ast.Call) and _hidden_random_state(child):
                    raise DecompositionError(f"{ast.unparse(child.func)}() in {node.name!r} uses the "
                                             f"process's hidden random state; pass a Generator instead",
                                             file=file, line=where(child))
                if isinstance(child, ast.Global | ast.Nonlocal):
                    rebinds = sorted(set(child.names) & variables) or list(child.names)
                    raise DecompositionError(f"{node.name!r} rebinds {rebinds[0]!r} through 'global': "
                                             f"codelets exchange values, not shared variables",
                                             file=file, line=where(child))
            function_reads[node.name] = _reads(node)
            function_nodes[node.name] = node
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                params = [a.arg for a in node.args.args]
                changed_in_body = set().union(*(_writes(s)[1] for s in node.body))
                mutated_params[node.name] = {i for i, p in enumerate(params) if p in changed_in_body}
    # Transitively: a function reads what the functions it calls read.
    closure = {name: set(reads) for name, reads in function_reads.items()}
    changed = True
    while changed:
        changed = False
        for reads in closure.values():
            for callee in list(reads & set(closure)):
                extra = closure[callee] - reads
                if extra:
                    reads |= extra
                    changed = True

    codelets: list[Codelet] = []
    last_writer: dict[str, str] = {}
    defined = set(parameters)
    last_effect: str | None = None
    for index, statement in enumerate(statements):
        for child in ast.walk(statement):
            problem = None
            if isinstance(child, ast.Global | ast.Nonlocal):
                problem = f"'{type(child).__name__.lower()}' at top level"
            elif isinstance(child, ast.Yield | ast.YieldFrom | ast.Await) \
                    and not _inside_scope(statement, child):
                problem = f"'{type(child).__name__.lower()}' at top level"
            elif isinstance(child, ast.Return) and not _inside_scope(statement, child):
                if not is_function:
                    problem = "'return' outside a function"
                elif child is not statement:
                    problem = "'return' inside a compound statement (only a top-level return is supported)"
            elif isinstance(child, ast.Call) and isinstance(child.func, ast.Name) \
                    and child.func.id in _DYNAMIC_CALLS:
                problem = f"{child.func.id}() reads or changes names the analysis cannot see"
            elif isinstance(child, ast.Call) and _hidden_random_state(child):
                problem = (f"{ast.unparse(child.func)}() uses the process's hidden random state, which "
                           f"codelets on other workers do not share: use a Generator "
                           f"(rng = np.random.default_rng(seed)) and its methods")
            if problem:
                raise DecompositionError(problem, file=file, line=where(child))
        direct_reads = _reads(statement)
        bound, mutated = _writes(statement)
        for call in ast.walk(statement):        # prelude functions that change an argument in place
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) \
                    and call.func.id in mutated_params:
                mutated |= {arg.id for i, arg in enumerate(call.args)
                            if i in mutated_params[call.func.id] and isinstance(arg, ast.Name)}
        calls = {name for name in direct_reads if name in closure}
        for callee in list(calls):
            calls |= closure[callee] & set(closure)
        reads = set(direct_reads)
        for callee in calls:
            reads |= closure[callee]
        if isinstance(statement, ast.If | ast.For | ast.While | ast.With | ast.Try | ast.AsyncFor
                      | ast.AsyncWith | ast.Match):
            reads |= bound & defined        # a branch may leave an earlier value in place
        outputs = (bound | mutated) & variables
        returns = any(isinstance(child, ast.Return) for child in ast.walk(statement)
                      if not _inside_scope(statement, child))
        if returns:
            outputs.add("__return__")
        inputs = sorted((reads | (mutated & defined)) & variables & defined)
        undefined = sorted((direct_reads & variables) - defined - bound)
        if undefined:
            raise DecompositionError(f"{undefined[0]!r} is read before the program assigns it",
                                     file=file, line=where(statement))
        effects = bool(_called_names(statement) & _EFFECT_CALLS) or any(
            _called_names(function_nodes[c]) & _EFFECT_CALLS for c in calls)
        deps = {last_writer[name] for name in inputs if name in last_writer}
        if effects and last_effect is not None:
            deps.add(last_effect)
        codelet_id = f"c{index}"
        span = lines[statement.lineno - 1:(statement.end_lineno or statement.lineno)]
        if isinstance(statement, ast.Return):
            value = ast.get_source_segment(source, statement.value) if statement.value else "None"
            span = [f"__return__ = ({value})"]
        nodes = [statement] + [function_nodes[c] for c in sorted(calls)]
        codelets.append(Codelet(
            id=codelet_id, source=textwrap.dedent("\n".join(span)), file=file, line=where(statement),
            end_line=(statement.end_lineno or statement.lineno) + first_line - 1, inputs=tuple(inputs),
            outputs=tuple(sorted(outputs)), mutates=tuple(sorted(mutated & set(inputs))),
            deps=tuple(sorted(deps, key=lambda d: int(d[1:]))), calls=tuple(sorted(calls)), effects=effects,
            cyclomatic=1 + sum(_cyclomatic(n) - 1 for n in nodes), size=sum(_size(n) for n in nodes)))
        for output in outputs:
            last_writer[output] = codelet_id
        defined |= outputs
        if effects:
            last_effect = codelet_id
        if returns:
            break                      # what follows a top-level return never runs
    # The prelude keeps its lines where they are (everything else blanked), so that a traceback
    # through a prelude function names the program's own line numbers.
    keep = {line for node in prelude_nodes
            for line in range(node.lineno, (node.end_lineno or node.lineno) + 1)}
    prelude = "\n" * (first_line - 1) + "\n".join(text if number in keep else ""
                                                 for number, text in enumerate(lines, start=1))
    if is_function:
        program_outputs = ("__return__",) if "__return__" in last_writer else ()
    else:
        program_outputs = tuple(sorted(name for name in last_writer if not name.startswith("_")))
    program_name = name or (program.__name__ if isinstance(program, types.FunctionType | types.ModuleType)
                            else file)
    return Program(program_name, prelude, tuple(codelets), program_outputs, parameters, tolerance)


def group(program: Program, estimate: Callable[[Codelet], float | None], budget: float) -> Program:
    """The program with runs of consecutive cheap codelets merged into one codelet each.

    A Dask task costs its overhead whatever it runs, so a statement that takes microseconds is
    cheaper run with its neighbours.  ``estimate(codelet)`` is a codelet's expected seconds, or None
    for one that must stay alone (one a scheduler should place on its own: matrix work, I/O ...);
    consecutive codelets join a group while the group's estimated total stays within ``budget``
    (the per-task overhead).  A group runs its statements in program order in one task, each with
    its own contract (an input it changes in place is copied first), so it computes what they
    compute apart; its contract is theirs combined: the inputs its statements read from outside
    it, everything they bind, the dependencies outside it.  Ids stay those of a group's first
    statement, so groups and single codelets keep program order.
    """
    if not budget > 0:
        raise FleetError(f"group budget {budget!r}: must be a positive number of seconds")
    runs: list[list[Codelet]] = []
    spent = 0.0
    for codelet in program.codelets:
        seconds = estimate(codelet)
        fits = seconds is not None and seconds <= budget
        if fits and runs and runs[-1][-1] is not None and spent + seconds <= budget:
            runs[-1].append(codelet)
            spent += seconds
        elif fits:
            runs.append([codelet])
            spent = seconds
        else:
            runs.append([codelet, None])        # alone (the None closes the run)
    runs = [[c for c in run if c is not None] for run in runs]
    owner = {member.id: run[0].id for run in runs for member in run}
    codelets = []
    for run in runs:
        if len(run) == 1:
            single = run[0]
            codelets.append(dataclasses.replace(single, deps=_group_deps(single.deps, owner)))
            continue
        produced: set[str] = set()
        inputs: list[str] = []
        for member in run:
            inputs += [name for name in member.inputs if name not in produced and name not in inputs]
            produced.update(member.outputs)
        first, last = run[0], run[-1]
        lines = [""] * (last.end_line - first.line + 1)
        for member in run:
            for offset, text in enumerate(member.source.splitlines()):
                lines[member.line - first.line + offset] = text
        inside = {member.id for member in run}
        codelets.append(Codelet(
            id=first.id, source="\n".join(lines), file=first.file, line=first.line, end_line=last.end_line,
            inputs=tuple(sorted(inputs)), outputs=tuple(sorted(produced)),
            mutates=tuple(sorted({name for m in run for name in m.mutates} & set(inputs))),
            deps=_group_deps(tuple(d for m in run for d in m.deps if d not in inside), owner),
            calls=tuple(sorted({name for m in run for name in m.calls})),
            effects=any(m.effects for m in run), cyclomatic=1 + sum(m.cyclomatic - 1 for m in run),
            size=sum(m.size for m in run), members=tuple(run)))
    return dataclasses.replace(program, codelets=tuple(codelets))


def _group_deps(deps: tuple[str, ...], owner: dict[str, str]) -> tuple[str, ...]:
    return tuple(sorted({owner[d] for d in deps}, key=lambda d: int(d[1:])))


def _hidden_random_state(call: ast.Call) -> bool:
    """``random.x(...)`` or ``np.random.x(...)`` / ``numpy.random.x(...)`` with a stateful ``x``."""
    func = call.func
    if not isinstance(func, ast.Attribute) or func.attr not in _STATEFUL_RANDOM:
        return False
    owner = func.value
    if isinstance(owner, ast.Name):
        return owner.id == "random"
    return isinstance(owner, ast.Attribute) and owner.attr == "random" and isinstance(owner.value, ast.Name)


def _inside_scope(top: ast.AST, node: ast.AST) -> bool:
    """Whether ``node`` is inside a function or lambda defined within ``top``."""
    for child in ast.walk(top):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and child is not top:
            if any(grandchild is node for grandchild in ast.walk(child)):
                return True
    return False
