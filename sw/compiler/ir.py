"""The compiler's one intermediate representation.

A :class:`Graph` is an immutable dataflow graph held in a
:class:`networkx.MultiDiGraph`: one graph node per :class:`Node`, one edge per
use of a tensor (``producer -> consumer``, keyed ``"<tensor>@<input index>"``,
so ``Add(x, x)`` has two edges).  Tensors are named as in ONNX; their
metadata is a :class:`TensorInfo` (shape, dtype and, when quantized, the
:class:`QuantParams`).

Node kinds
----------
``INPUT`` / ``OUTPUT``
    Graph inputs (one output tensor) and graph outputs (one input tensor).
``CONSTANT``
    An initializer or folded constant; its value is ``node.value``.
``OPERATOR``
    An operator: ONNX ops (``domain=""``), Braze's quantized ops
    (``domain="braze"``, see :mod:`braze.sw.compiler.quantize`) or, when imported with
    ``allow_fallback``, any other op marked ``device="cpu"``.
``TRANSFER``
    A data movement inserted by later passes; ``op_type="Transfer"``, attrs
    ``src`` and ``dst`` name locations from :data:`LOCATIONS`.
``CONTROL``
    Control flow (``Loop``, ``If``, ``Scan``); representable so that it can be
    rejected by name, not compiled.
``MONITOR``
    A monitoring point (:mod:`braze.sw.compiler.monitors`): reads one tensor,
    produces nothing; attrs ``stats`` (what the runtime gathers there) and, once
    lowered, ``via`` (how: a chip counter, the host copy at a boundary, or a
    host sample).  Evaluation ignores it.

Passes are pure: a :class:`Graph` is never changed after construction, every
edit (:meth:`Graph.replace`, :meth:`Graph.rewire`, ...) returns a new graph
that shares the unchanged (frozen) nodes with the old one.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import networkx as nx
import numpy as np

from braze.isa.errors import BrazeError

#: Places a ``Transfer`` node moves data between.
LOCATIONS = ("host", "device", "dram", "spad", "acc")


class InvalidGraph(BrazeError):
    """A graph breaks a structural or typing rule; names the node and the problem."""

    def __init__(self, problem: str, *, node: str | None = None):
        self.problem = problem
        self.node = node
        super().__init__(f"node {node!r}: {problem}" if node is not None else problem)


class NodeKind(enum.Enum):
    INPUT = "input"
    OUTPUT = "output"
    CONSTANT = "constant"
    OPERATOR = "operator"
    TRANSFER = "transfer"
    CONTROL = "control"
    MONITOR = "monitor"


@dataclasses.dataclass(frozen=True)
class QuantParams:
    """Affine quantization of a tensor: ``real = (q - zero_point) * scale``.

    Parameters
    ----------
    scale : tuple of float
        One scale (per tensor) or one per slice along ``axis`` (per channel).
    zero_point : tuple of int
        Same length as ``scale``.
    axis : int or None
        Channel axis of per-channel parameters; ``None`` for per tensor.
    dtype : str
        Integer type of ``q``: ``"int8"``, ``"uint8"`` or ``"int32"``.
    """

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None
    dtype: str = "int8"

    def __post_init__(self):
        object.__setattr__(self, "scale", tuple(float(s) for s in np.ravel(self.scale)))
        object.__setattr__(self, "zero_point", tuple(int(z) for z in np.ravel(self.zero_point)))
        if len(self.scale) != len(self.zero_point) or not self.scale:
            raise ValueError(f"quant params: {len(self.scale)} scales but {len(self.zero_point)} zero points")
        if self.axis is None and len(self.scale) != 1:
            raise ValueError(f"quant params: {len(self.scale)} scales need a channel axis")
        if not all(s > 0 and np.isfinite(s) for s in self.scale):
            raise ValueError(f"quant params: scales must be positive and finite, got {self.scale}")

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def __str__(self) -> str:
        if self.per_channel:
            return f"{self.dtype} per-channel(axis={self.axis}, n={len(self.scale)})"
        return f"{self.dtype} s={self.scale[0]:.4g} zp={self.zero_point[0]}"


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Metadata of one tensor.

    ``shape`` holds ints for known dims and strings (or ``None``) for symbolic
    ones; ``shape=None`` means even the rank is unknown.  ``dtype`` is a numpy
    type name (``"float32"``, ``"int8"``, ...).
    """

    name: str
    shape: tuple[int | str | None, ...] | None = None
    dtype: str | None = None
    quant: QuantParams | None = None

    def __post_init__(self):
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(self.shape))
        if self.dtype is not None:
            object.__setattr__(self, "dtype", np.dtype(self.dtype).name)

    @property
    def static(self) -> bool:
        """Every dimension known."""
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def __str__(self) -> str:
        shape = "?" if self.shape is None else "x".join("?" if d is None else str(d) for d in self.shape)
        quant = f" [{self.quant}]" if self.quant is not None else ""
        return f"{self.dtype or '?'}[{shape}]{quant}"


@dataclasses.dataclass(frozen=True, eq=False)
class Node:
    """One node of a :class:`Graph`; frozen, so graphs can share it.

    ``inputs`` and ``outputs`` are tensor names (``""`` for an omitted
    optional input, as in ONNX).  ``attrs`` is read-only.
    """

    name: str
    kind: NodeKind
    op_type: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    attrs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    domain: str = ""
    device: str = "accel"
    value: np.ndarray | None = None

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "attrs", MappingProxyType(dict(self.attrs)))
        if self.value is not None:
            value = np.array(self.value)           # a private copy nobody else can write
            value.flags.writeable = False
            object.__setattr__(self, "value", value)
        if self.device not in ("accel", "cpu"):
            raise ValueError(f"node {self.name!r}: device must be 'accel' or 'cpu', got {self.device!r}")

    def replace(self, **changes) -> Node:
        """A copy with some fields changed (``attrs`` replaced wholesale)."""
        return dataclasses.replace(self, **changes)

    def with_attrs(self, **attrs) -> Node:
        """A copy with some attributes added or changed (``None`` removes one)."""
        merged = dict(self.attrs)
        for key, value in attrs.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        return dataclasses.replace(self, attrs=merged)

    @property
    def qualified_op(self) -> str:
        return f"{self.domain}.{self.op_type}" if self.domain else self.op_type

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.kind.name}, {self.qualified_op}, {self.inputs} -> {self.outputs})"


def input_node(tensor: str) -> Node:
    return Node(f"input:{tensor}", NodeKind.INPUT, "Input", outputs=(tensor,))


def output_node(tensor: str) -> Node:
    return Node(f"output:{tensor}", NodeKind.OUTPUT, "Output", inputs=(tensor,))


def constant_node(tensor: str, value: np.ndarray) -> Node:
    return Node(f"const:{tensor}", NodeKind.CONSTANT, "Constant", outputs=(tensor,), value=value)


def constant_info(tensor: str, value: np.ndarray, quant: QuantParams | None = None) -> TensorInfo:
    value = np.asarray(value)
    return TensorInfo(tensor, tuple(int(d) for d in value.shape), value.dtype.name, quant)


class Graph:
    """An immutable dataflow graph.

    Parameters
    ----------
    nodes : iterable of Node
        In a deterministic order (the import order); node names must be unique.
    tensors : mapping of str to TensorInfo
        Metadata of tensors; a tensor without an entry has unknown shape and type.
    name : str
        For printing.
    """

    def __init__(self, nodes: Iterable[Node], tensors: Mapping[str, TensorInfo] | None = None, *,
                 name: str = "graph", opset: int = 13):
        self.name = name
        self.opset = opset
        self._nodes: dict[str, Node] = {}
        for node in nodes:
            if not isinstance(node, Node):
                raise TypeError(f"graph {name!r}: expected a Node, got {node!r}")
            if node.name in self._nodes:
                raise InvalidGraph("two nodes have this name", node=node.name)
            self._nodes[node.name] = node
        self._tensors: Mapping[str, TensorInfo] = MappingProxyType(dict(tensors or {}))
        self._producers: dict[str, list[Node]] = {}
        self._consumers: dict[str, list[Node]] = {}
        for node in self._nodes.values():
            for tensor in node.outputs:
                if tensor:
                    self._producers.setdefault(tensor, []).append(node)
            for tensor in dict.fromkeys(t for t in node.inputs if t):
                self._consumers.setdefault(tensor, []).append(node)
        self._nx = nx.MultiDiGraph()
        for position, node in enumerate(self._nodes.values()):
            self._nx.add_node(node.name, node=node, position=position)
        for node in self._nodes.values():
            for index, tensor in enumerate(node.inputs):
                for producer in self._producers.get(tensor, ()):
                    self._nx.add_edge(producer.name, node.name, key=f"{tensor}@{index}", tensor=tensor)
        self._order: tuple[Node, ...] | None = None

    # -- queries -----------------------------------------------------------------------------------
    @property
    def nodes(self) -> tuple[Node, ...]:
        """All nodes, in construction order."""
        return tuple(self._nodes.values())

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return self._tensors

    @property
    def nx(self) -> nx.MultiDiGraph:
        """The networkx view (a copy: editing it does not change this graph)."""
        return self._nx.copy()

    def node(self, name: str) -> Node:
        try:
            return self._nodes[name]
        except KeyError:
            raise KeyError(f"graph {self.name!r} has no node {name!r}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def tensor(self, name: str) -> TensorInfo:
        """Metadata of ``name`` (an empty :class:`TensorInfo` when unknown)."""
        return self._tensors.get(name) or TensorInfo(name)

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(n.outputs[0] for n in self._nodes.values() if n.kind is NodeKind.INPUT)

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(n.inputs[0] for n in self._nodes.values() if n.kind is NodeKind.OUTPUT)

    def producers(self, tensor: str) -> tuple[Node, ...]:
        return tuple(self._producers.get(tensor, ()))

    def producer(self, tensor: str) -> Node | None:
        """The node writing ``tensor`` (the first one, if the graph is invalid and has several)."""
        producers = self._producers.get(tensor)
        return producers[0] if producers else None

    def consumers(self, tensor: str) -> tuple[Node, ...]:
        """Nodes reading ``tensor``, in construction order, each once."""
        return tuple(self._consumers.get(tensor, ()))

    def constant(self, tensor: str) -> np.ndarray | None:
        """The value of ``tensor`` if a ``CONSTANT`` node produces it."""
        producer = self.producer(tensor)
        return producer.value if producer is not None and producer.kind is NodeKind.CONSTANT else None

    def operators(self) -> list[Node]:
        """``OPERATOR`` nodes in topological order."""
        return [n for n in self.topological_order() if n.kind is NodeKind.OPERATOR]

    def topological_order(self) -> tuple[Node, ...]:
        """Nodes in dependency order; ties broken by construction order, so it is deterministic."""
        if self._order is None:
            try:
                names = nx.lexicographical_topological_sort(
                    self._nx, key=lambda name: self._nx.nodes[name]["position"])
                self._order = tuple(self._nodes[name] for name in names)
            except nx.NetworkXUnfeasible:
                cycle = nx.find_cycle(self._nx)
                raise InvalidGraph(f"graph has a cycle through {[edge[0] for edge in cycle]}",
                                   node=cycle[0][0]) from None
        return self._order

    # -- copy-on-write edits -----------------------------------------------------------------------
    def replace(self, nodes: Iterable[Node] | None = None,
                tensors: Mapping[str, TensorInfo] | None = None) -> Graph:
        """A new graph with the given nodes and/or tensor table; the rest shared."""
        return Graph(self.nodes if nodes is None else nodes,
                     self._tensors if tensors is None else tensors, name=self.name, opset=self.opset)

    def edit(self, *, remove: Iterable[str] = (),
             substitute: Mapping[str, Node | Sequence[Node]] | None = None,
             add: Iterable[Node] = (), tensors: Iterable[TensorInfo] = ()) -> Graph:
        """A new graph with nodes removed, substituted in place (by one or more nodes) and appended.

        ``tensors`` adds or overwrites tensor metadata.  Tensor entries that no
        node mentions any more are dropped.
        """
        remove = set(remove)
        substitute = dict(substitute or {})
        unknown = (remove | set(substitute)) - set(self._nodes)
        if unknown:
            raise KeyError(f"graph {self.name!r} has no nodes {sorted(unknown)}")
        nodes: list[Node] = []
        for node in self._nodes.values():
            if node.name in remove:
                continue
            if node.name in substitute:
                new = substitute[node.name]
                nodes.extend([new] if isinstance(new, Node) else new)
            else:
                nodes.append(node)
        nodes.extend(add)
        table = dict(self._tensors)
        table.update({info.name: info for info in tensors})
        used = {t for n in nodes for t in (*n.inputs, *n.outputs) if t}
        return Graph(nodes, {k: v for k, v in table.items() if k in used}, name=self.name, opset=self.opset)

    def rewire(self, mapping: Mapping[str, str], *, keep: Iterable[str] = ()) -> Graph:
        """A new graph where consumers read ``mapping[t]`` instead of ``t``.

        ``OUTPUT`` nodes are rewired too, which renames a graph output; callers
        that must keep output names use :meth:`rename` instead.  Nodes named in
        ``keep`` are left alone.
        """
        keep = set(keep)
        nodes = []
        for node in self._nodes.values():
            if node.name not in keep and any(t in mapping for t in node.inputs):
                node = node.replace(inputs=tuple(mapping.get(t, t) for t in node.inputs))
            nodes.append(node)
        return self.replace(nodes)

    def rename(self, old: str, new: str) -> Graph:
        """A new graph where tensor ``old`` is called ``new`` everywhere (producer and consumers)."""
        nodes = [n.replace(inputs=tuple(new if t == old else t for t in n.inputs),
                           outputs=tuple(new if t == old else t for t in n.outputs))
                 if old in n.inputs or old in n.outputs else n for n in self._nodes.values()]
        table = {k: v for k, v in self._tensors.items() if k not in (old, new)}
        if old in self._tensors:
            table[new] = dataclasses.replace(self._tensors[old], name=new)
        return self.replace(nodes, table)

    def unique_name(self, stem: str) -> str:
        """A node or tensor name not yet used in this graph."""
        taken = set(self._nodes) | set(self._producers) | set(self._consumers) | set(self._tensors)
        if stem not in taken:
            return stem
        index = 1
        while f"{stem}_{index}" in taken:
            index += 1
        return f"{stem}_{index}"

    # -- printing ----------------------------------------------------------------------------------
    def to_text(self) -> str:
        """A readable listing, one line per node in topological order."""
        lines = [f"graph {self.name} (opset {self.opset}): "
                 f"inputs {list(self.inputs)} outputs {list(self.outputs)}"]
        for node in self.topological_order():
            outs = ", ".join(f"{t}: {self.tensor(t)}" for t in node.outputs)
            if node.kind is NodeKind.CONSTANT:
                lines.append(f"  const  {outs}")
            elif node.kind in (NodeKind.INPUT, NodeKind.OUTPUT):
                tensor = (node.outputs or node.inputs)[0]
                lines.append(f"  {node.kind.value:<6} {tensor}: {self.tensor(tensor)}")
            else:
                attrs = ", ".join(f"{k}={_short(v)}" for k, v in sorted(node.attrs.items()))
                device = " @cpu" if node.device == "cpu" else ""
                lines.append(f"  {node.name}: {node.qualified_op}{device}({', '.join(node.inputs)})"
                             f"{' {' + attrs + '}' if attrs else ''} -> {outs}")
        return "\n".join(lines)

    __str__ = to_text

    def __repr__(self) -> str:
        return (f"<Graph {self.name!r}: {len(self._nodes)} nodes, "
                f"inputs {self.inputs}, outputs {self.outputs}>")

    def to_dot(self) -> str:
        """Graphviz source: operators as boxes, constants as notes, edges labelled with tensor shapes."""
        colors = {NodeKind.INPUT: "lightblue", NodeKind.OUTPUT: "lightblue", NodeKind.CONSTANT: "lightgrey",
                  NodeKind.OPERATOR: "white", NodeKind.TRANSFER: "khaki", NodeKind.CONTROL: "salmon",
                  NodeKind.MONITOR: "palegreen"}
        lines = [f'digraph "{_dot_escape(self.name)}" {{', "  rankdir=TB;",
                 '  node [fontname="Helvetica", fontsize=10];']
        ids = {node.name: f"n{i}" for i, node in enumerate(self.topological_order())}
        for node in self.topological_order():
            shape = "note" if node.kind is NodeKind.CONSTANT else "box"
            label = node.qualified_op if node.kind is NodeKind.OPERATOR else node.kind.value
            label += f"\\n{node.name}"
            if node.device == "cpu":
                label += "\\n(cpu)"
            lines.append(f'  {ids[node.name]} [label="{_dot_escape(label)}", shape={shape}, '
                         f'style=filled, fillcolor={colors[node.kind]}];')
        for src, dst, data in self._nx.edges(data=True):
            label = f"{data['tensor']}\\n{self.tensor(data['tensor'])}"
            lines.append(f'  {ids[src]} -> {ids[dst]} [label="{_dot_escape(label)}", fontsize=8];')
        lines.append("}")
        return "\n".join(lines)

    def fingerprint(self) -> str:
        """A digest of everything in the graph (nodes, attributes, constants, metadata)."""
        digest = hashlib.sha256()
        for node in self._nodes.values():
            digest.update(repr((node.name, node.kind, node.op_type, node.domain, node.device, node.inputs,
                                node.outputs, sorted(node.attrs))).encode())
            for key in sorted(node.attrs):
                value = node.attrs[key]
                if isinstance(value, np.ndarray):
                    digest.update(value.dtype.str.encode() + repr(value.shape).encode() + value.tobytes())
                else:
                    digest.update(repr(value).encode())
            if node.value is not None:
                digest.update(node.value.dtype.str.encode() + repr(node.value.shape).encode())
                digest.update(np.ascontiguousarray(node.value).tobytes())
        for name in sorted(self._tensors):
            digest.update(repr(self._tensors[name]).encode())
        return digest.hexdigest()


def _short(value: Any, limit: int = 40) -> str:
    if isinstance(value, np.ndarray):
        return f"array{list(value.shape)}" if value.size > 8 else repr(value.tolist())
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dot_escape(text: str) -> str:
    return text.replace('"', '\\"')
