"""Three data-dependent digits models, built with torch and exported to ONNX, for the dataflow runtime.

* :func:`early_exit_cnn` -- a CNN with two heads: a cheap stem (conv 3x3, 8 channels, ReLU,
  max-pool to 4x4) and its head give ``logits1``; when the first head is confident -- its largest
  logit (``ReduceMax`` over the whole tensor, so batch-wide as ONNX's ``If`` is) exceeds a
  threshold -- an ONNX ``If`` returns them (the *exit* branch), otherwise its else branch runs a
  deeper part (conv 3x3, 16 channels, ReLU, dense 64, dense 10) on the stem's features.  The
  threshold is the :data:`EXIT_QUANTILE` quantile of the clean training digits' largest logit.  The
  largest logit (not the largest softmax probability) is the confidence because it is what the chip
  can test exactly: an int8 maximum against an integer threshold (``PREDICATE max``, see
  :mod:`braze.sw.runtime.onchip_if`), so the whole If runs in one program.
* :func:`exit_encoder_cnn` -- an early-exit encoder returning an embedding, whose exit branch is one
  ``MaxPool`` on the stem's feature map: an element-wise op the static plan keeps on the host, between
  two accelerator partitions' worth of work (the ``pull-elementwise`` decision's model).
* :func:`moe_mlp` -- a mixture of four expert MLPs (``64 -> 48 -> 10`` each) behind a gate
  (``Gemm`` to 4 logits) with ``TopK`` (k=1) routing: each row's output is its expert's.  The gate
  is trained to route by digit class (:data:`EXPERT_OF_CLASS`), so the mix of digits decides the
  mix of experts.

Both are trained with torch on scikit-learn's bundled digits (no downloads) in a few seconds,
deterministically for a seed; each part is exported by ``torch.onnx.export`` and the parts are
joined into one ONNX model with the control node (``If``, or ``TopK`` and the gated sum) between
them, as a framework writes a model whose control flow it cannot trace.

Input distributions (:func:`inputs`): ``easy`` (clean validation digits) and ``hard`` (the same
with heavy noise, so the first head is rarely confident) for the early-exit CNN; ``skewed``
(digits of expert 0's classes only) and ``uniform`` (all digits) for the mixture.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from braze.isa.errors import BrazeError

from ..compiler.cache import cache_dir
from ..compiler.models import load_digits_split

__all__ = ["DataflowModel", "early_exit_cnn", "exit_encoder_cnn", "moe_mlp", "model_of", "family_of",
           "inputs", "DISTRIBUTIONS", "EXIT_QUANTILE",
           "EXPERT_OF_CLASS", "EXPERTS", "calibration_feeds"]

#: The early-exit CNN returns the first head's logits when their largest value exceeds this quantile of
#: that value over the clean training digits (so about 70% of clean digits exit, few noisy ones).
EXIT_QUANTILE = 0.3
EXPERTS = 4
#: The expert the mixture's gate is trained to pick for each digit class.
EXPERT_OF_CLASS = (0, 0, 0, 1, 1, 2, 2, 3, 3, 3)
#: Each model's two input distributions.
DISTRIBUTIONS = {"early_exit": ("easy", "hard"), "moe": ("skewed", "uniform"),
                 "exit_encoder": ("easy", "hard")}
#: Each family's model name.
FAMILY_MODELS = {"early_exit": "early_exit_cnn", "moe": "moe_mlp", "exit_encoder": "exit_encoder_cnn"}
#: Standard deviation of the noise that makes digits ``hard`` (pixels lie in [0, 1]).
HARD_NOISE = 0.45
#: Bumped when a model's architecture or training changes: names the exported files on disk.
MODEL_VERSION = 5


@dataclasses.dataclass(frozen=True)
class DataflowModel:
    """An exported model: ONNX bytes, its input name and shape per sample, and its test accuracy."""

    name: str
    onnx_bytes: bytes
    input_name: str
    sample_shape: tuple[int, ...]
    batch: int
    accuracy: float

    def proto(self) -> onnx.ModelProto:
        return onnx.load_from_string(self.onnx_bytes)


def _cached(name: str, build: Callable[[], DataflowModel]) -> DataflowModel:
    """The model exported earlier (``$BRAZE_CACHE_DIR/dataflow_models``), else ``build()`` and store it:
    training takes tens of seconds, and is deterministic for a seed."""
    folder = cache_dir().parent / "dataflow_models"
    path, meta = folder / f"{name}-v{MODEL_VERSION}.onnx", folder / f"{name}-v{MODEL_VERSION}.json"
    try:
        fields = json.loads(meta.read_text())
        return DataflowModel(onnx_bytes=path.read_bytes(), **{k: tuple(v) if isinstance(v, list) else v
                                                              for k, v in fields.items()})
    except (OSError, ValueError, TypeError):
        pass
    model = build()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_bytes(model.onnx_bytes)
        fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name != "onnx_bytes"}
        meta.write_text(json.dumps(fields))
    except OSError:
        pass                          # a read-only cache: build again next time
    return model


def _torch():
    try:
        import torch
    except ImportError as err:     # torch is a development dependency
        raise BrazeError("the dataflow models are built with torch: pip install -e '.[dev]'") from err
    return torch


def _export(module, example, input_names: list[str], output_names: list[str]) -> onnx.ModelProto:
    torch = _torch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import logging
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(module.eval(), (example,), None, input_names=input_names,
                                    output_names=output_names, dynamo=True, optimize=True, verbose=False)
    return program.model_proto


def _prefixed(graph: onnx.GraphProto, prefix: str, keep: set[str]) -> tuple[list, list]:
    """The nodes and initializers of ``graph`` with every name not in ``keep`` prefixed."""
    def name(value: str) -> str:
        return value if not value or value in keep else prefix + value

    nodes = []
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = prefix + (node.name or node.op_type)
        copy.input[:] = [name(v) for v in node.input]
        copy.output[:] = [name(v) for v in node.output]
        nodes.append(copy)
    inits = []
    for init in graph.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(init)
        copy.name = name(init.name)
        inits.append(copy)
    return nodes, inits


def _model(graph: onnx.GraphProto, opset: int) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="braze")
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _opset(model: onnx.ModelProto) -> int:
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _train(module, loss_fn, x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int) -> None:
    torch = _torch()
    torch.manual_seed(seed)
    optimiser = torch.optim.Adam(module.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y))
    order = np.random.default_rng(seed)
    module.train()
    for _ in range(epochs):
        for batch in np.array_split(order.permutation(len(x)), max(1, len(x) // 64)):
            optimiser.zero_grad()
            loss = loss_fn(module, xt[batch], yt[batch])
            loss.backward()
            optimiser.step()
    module.eval()


def _clean_and_noisy(seed: int):
    """The digits split, its training images as 1x8x8, and the training set of both early-exit models:
    each image clean and with :data:`HARD_NOISE` (so that the deep part handles what the stem cannot)."""
    data = load_digits_split()
    x_train = data.x_train.reshape(-1, 1, 8, 8)
    rng = np.random.default_rng(seed)
    noisy = np.clip(x_train + rng.normal(0, HARD_NOISE, x_train.shape), 0, 1).astype(np.float32)
    return (data, x_train, np.concatenate([x_train, noisy]),
            np.concatenate([data.y_train, data.y_train]))


def _exit_model(name: str, stem, deep, x_train: np.ndarray, deep_example, *, carried: str, deep_output: str,
                then_nodes: list, then_output: str, output: str, output_shape: list[int],
                if_name: str) -> tuple[bytes, float]:
    """A trained stem (``x`` -> ``carried``, ``logits1``) and deep part (``carried`` -> ``deep_output``)
    exported and joined by an ``If`` on the stem head's largest logit -- the exit branch ``then_nodes`` --
    as the two early-exit models are; returns the model and its exit threshold (the
    :data:`EXIT_QUANTILE` quantile of that logit over the training digits)."""
    torch = _torch()
    stem_onnx = _export(stem, torch.zeros(1, 1, 8, 8), ["x"], [carried, "logits1"])
    deep_onnx = _export(deep, deep_example, [carried], [deep_output])
    opset = max(_opset(stem_onnx), _opset(deep_onnx))
    stem_nodes, stem_inits = _prefixed(stem_onnx.graph, "stem/", {"x", carried, "logits1"})
    deep_nodes, deep_inits = _prefixed(deep_onnx.graph, "deep/", {carried, deep_output})
    with torch.no_grad():
        _, train_logits = stem(torch.from_numpy(x_train.copy()))
    exit_logit = float(np.quantile(train_logits.max(1).values.numpy(), EXIT_QUANTILE))
    confidence = [
        helper.make_node("ReduceMax", ["logits1"], ["confidence"], name="exit/ReduceMax", keepdims=0),
        helper.make_node("Greater", ["confidence", "exit_threshold"], ["exit"], name="exit/Greater"),
    ]
    info = helper.make_tensor_value_info
    then_branch = helper.make_graph(then_nodes, "exit_branch", [],
                                    [info(then_output, TensorProto.FLOAT, output_shape)])
    else_branch = helper.make_graph(deep_nodes, "deep_branch", [],
                                    [info(deep_output, TensorProto.FLOAT, output_shape)], deep_inits)
    if_node = helper.make_node("If", ["exit"], [output], name=if_name, then_branch=then_branch,
                               else_branch=else_branch)
    threshold = numpy_helper.from_array(np.array(exit_logit, np.float32), "exit_threshold")
    graph = helper.make_graph(stem_nodes + confidence + [if_node], name,
                              [info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [info(output, TensorProto.FLOAT, output_shape)], stem_inits + [threshold])
    return _model(graph, opset), exit_logit


# ---------------------------------------------------------------------------------------------------
# The early-exit CNN
# ---------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def early_exit_cnn(seed: int = 0) -> DataflowModel:
    """The early-exit CNN (batch 1: the ``If`` decides per image), trained and exported (cached on disk)."""
    return _cached(f"early_exit_cnn-s{seed}", lambda: _build_early_exit_cnn(seed))


def _build_early_exit_cnn(seed: int) -> DataflowModel:
    torch = _torch()
    nn = torch.nn
    torch.manual_seed(seed)

    class Stem(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3)
            self.head = nn.Linear(8 * 3 * 3, 10)

        def forward(self, x):
            features = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
            return features, self.head(torch.flatten(features, 1))

    class Deep(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 16, 3)
            self.fc1 = nn.Linear(16, 64)
            self.fc2 = nn.Linear(64, 10)

        def forward(self, features):
            h = torch.relu(self.conv(features))
            return self.fc2(torch.relu(self.fc1(torch.flatten(h, 1))))

    stem, deep = Stem(), Deep()
    data, x_train, x_all, y_all = _clean_and_noisy(seed)
    both = nn.ModuleList([stem, deep])

    def loss(module, x, y):
        features, logits1 = module[0](x)
        return nn.functional.cross_entropy(logits1, y) + nn.functional.cross_entropy(module[1](features), y)

    _train(both, loss, x_all, y_all, epochs=10, seed=seed)

    then_node = helper.make_node("Identity", ["logits1"], ["exit_logits"], name="then/Id")
    onnx_bytes, exit_logit = _exit_model("early_exit_cnn", stem, deep, x_train, torch.zeros(1, 8, 3, 3),
                                         carried="features", deep_output="logits2", then_nodes=[then_node],
                                         then_output="exit_logits", output="logits", output_shape=[1, 10],
                                         if_name="early_exit/If")
    with torch.no_grad():
        xv = torch.from_numpy(data.x_val.reshape(-1, 1, 8, 8).copy())
        features, logits1 = stem(xv)
        logits2 = deep(features)
        exit_ = logits1.max(1).values > exit_logit
        predicted = torch.where(exit_[:, None], logits1, logits2).argmax(1).numpy()
    return DataflowModel("early_exit_cnn", onnx_bytes, "x", (1, 8, 8), 1,
                         float(np.mean(predicted == data.y_val)))


# ---------------------------------------------------------------------------------------------------
# The early-exit encoder: an element-wise op between partitions
# ---------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def exit_encoder_cnn(seed: int = 0) -> DataflowModel:
    """The early-exit encoder (batch 1), trained and exported (cached on disk): see _build_exit_encoder."""
    return _cached(f"exit_encoder_cnn-s{seed}", lambda: _build_exit_encoder(seed))


def _build_exit_encoder(seed: int) -> DataflowModel:
    """An encoder whose output is an embedding (8 channels, 4x4) of the digit, with an early exit.

    The stem (conv 3x3 with padding, 8 channels, ReLU: an 8x8 feature map ``stem_map``) feeds a small head
    (max-pool 4x4, dense 10) whose largest logit decides, as in the early-exit CNN, whether the stem is
    enough.  The exit branch is one element-wise op on the stem's map -- ``MaxPool`` 2x2, the embedding --
    and no GEMM, so the partitioner keeps it on the host: the stem's partition sends its whole map (512
    B int8) to the host on every run, which pools it to 128 B.  The deep branch refines the map (conv 3x3,
    8 channels, ReLU) before the same pooling.  Both convolutions are trained with a classifier on the
    embedding (not exported), so the embedding separates the digits."""
    torch = _torch()
    nn = torch.nn
    torch.manual_seed(seed)

    class Stem(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.head = nn.Linear(8 * 2 * 2, 10)

        def forward(self, x):
            stem_map = torch.relu(self.conv(x))
            return stem_map, self.head(torch.flatten(nn.functional.max_pool2d(stem_map, 4), 1))

    class Deep(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, stem_map):
            return nn.functional.max_pool2d(torch.relu(self.conv(stem_map)), 2)

    stem, deep, probe = Stem(), Deep(), nn.Linear(8 * 4 * 4, 10)
    data, x_train, x_all, y_all = _clean_and_noisy(seed)
    parts = nn.ModuleList([stem, deep, probe])

    def loss(module, x, y):
        stem_map, logits1 = module[0](x)
        embedding = module[1](stem_map)
        return (nn.functional.cross_entropy(logits1, y)
                + nn.functional.cross_entropy(module[2](torch.flatten(embedding, 1)), y))

    _train(parts, loss, x_all, y_all, epochs=10, seed=seed)
    pool = helper.make_node("MaxPool", ["stem_map"], ["exit_embedding"], name="then/MaxPool",
                            kernel_shape=[2, 2], strides=[2, 2])
    onnx_bytes, exit_logit = _exit_model("exit_encoder_cnn", stem, deep, x_train, torch.zeros(1, 8, 8, 8),
                                         carried="stem_map", deep_output="deep_embedding", then_nodes=[pool],
                                         then_output="exit_embedding", output="embedding",
                                         output_shape=[1, 8, 4, 4], if_name="exit_encoder/If")
    with torch.no_grad():                 # accuracy of the probe on the embedding the model returns
        xv = torch.from_numpy(data.x_val.reshape(-1, 1, 8, 8).copy())
        stem_map, logits1 = stem(xv)
        exit_ = logits1.max(1).values > exit_logit
        pooled = nn.functional.max_pool2d(stem_map, 2)
        embedding = torch.where(exit_[:, None, None, None], pooled, deep(stem_map))
        predicted = probe(torch.flatten(embedding, 1)).argmax(1).numpy()
    return DataflowModel("exit_encoder_cnn", onnx_bytes, "x", (1, 8, 8), 1,
                         float(np.mean(predicted == data.y_val)))


# ---------------------------------------------------------------------------------------------------
# The mixture of experts
# ---------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def moe_mlp(seed: int = 0, batch: int = 8) -> DataflowModel:
    """The mixture-of-experts MLP for batches of ``batch`` rows, trained and exported (cached on disk)."""
    return _cached(f"moe_mlp-s{seed}-b{batch}", lambda: _build_moe_mlp(seed, batch))


def _build_moe_mlp(seed: int, batch: int) -> DataflowModel:
    torch = _torch()
    nn = torch.nn
    torch.manual_seed(seed)

    def expert():
        return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))

    gate = nn.Linear(64, EXPERTS)
    experts = nn.ModuleList([expert() for _ in range(EXPERTS)])
    data = load_digits_split()
    route = torch.tensor(EXPERT_OF_CLASS)

    def loss(modules, x, y):
        gate_, experts_ = modules
        outputs = torch.stack([e(x) for e in experts_], 1)                     # (n, experts, 10)
        chosen = outputs[torch.arange(len(x)), route[y]]                        # train each on its classes
        return nn.functional.cross_entropy(chosen, y) + nn.functional.cross_entropy(gate_(x), route[y])

    _train(nn.ModuleList([gate, experts]), loss, data.x_train, data.y_train, epochs=15, seed=seed)

    example = torch.zeros(batch, 64)
    gate_onnx = _export(gate, example, ["x"], ["gate_logits"])
    parts = [_export(e, example, ["x"], [f"expert{i}_out"]) for i, e in enumerate(experts)]
    opset = max(_opset(m) for m in [gate_onnx, *parts])
    nodes, inits = _prefixed(gate_onnx.graph, "gate/", {"x", "gate_logits"})
    for i, part in enumerate(parts):
        more_nodes, more_inits = _prefixed(part.graph, f"expert{i}/", {"x", f"expert{i}_out"})
        nodes += more_nodes
        inits += more_inits
    inits += [numpy_helper.from_array(np.array([1], np.int64), "topk_k"),
              numpy_helper.from_array(np.arange(EXPERTS, dtype=np.int64), "expert_ids")]
    nodes += [
        helper.make_node("TopK", ["gate_logits", "topk_k"], ["gate_top", "route"], name="gate/TopK", axis=1),
        helper.make_node("Equal", ["route", "expert_ids"], ["route_mask_bool"], name="gate/Equal"),
        helper.make_node("Cast", ["route_mask_bool"], ["route_mask"], name="gate/Cast", to=TensorProto.FLOAT),
        helper.make_node("Split", ["route_mask"], [f"mask{i}" for i in range(EXPERTS)], name="gate/Split",
                         axis=1, num_outputs=EXPERTS),
    ]
    total = None
    for i in range(EXPERTS):
        nodes.append(helper.make_node("Mul", [f"mask{i}", f"expert{i}_out"], [f"gated{i}"],
                                      name=f"combine/Mul{i}"))
        if total is None:
            total = f"gated{i}"
        else:
            out = "logits" if i == EXPERTS - 1 else f"sum{i}"
            nodes.append(helper.make_node("Add", [total, f"gated{i}"], [out], name=f"combine/Add{i}"))
            total = out
    info = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "moe_mlp", [info("x", TensorProto.FLOAT, [batch, 64])],
                              [info("logits", TensorProto.FLOAT, [batch, 10])], inits)
    with torch.no_grad():
        xv = torch.from_numpy(data.x_val.copy())
        chosen = gate(xv).argmax(1)
        outputs = torch.stack([e(xv) for e in experts], 1)
        predicted = outputs[torch.arange(len(xv)), chosen].argmax(1).numpy()
    return DataflowModel("moe_mlp", _model(graph, opset), "x", (64,), batch,
                         float(np.mean(predicted == data.y_val)))


# ---------------------------------------------------------------------------------------------------
# Input distributions
# ---------------------------------------------------------------------------------------------------

def inputs(model: DataflowModel, distribution: str, runs: int, *, seed: int = 0,
           training: bool = False) -> list[dict[str, np.ndarray]]:
    """``runs`` feeds of ``model`` drawn from ``distribution`` (validation digits; training digits with
    ``training``)."""
    data = load_digits_split()
    x, y = (data.x_train, data.y_train) if training else (data.x_val, data.y_val)
    rng = np.random.default_rng(seed)
    family = family_of(model)
    if distribution not in DISTRIBUTIONS[family]:
        raise BrazeError(f"distribution {distribution!r} of {model.name}: choose one of "
                         f"{', '.join(DISTRIBUTIONS[family])}")
    if family == "moe" and distribution == "skewed":
        x = x[np.isin(y, [c for c, e in enumerate(EXPERT_OF_CLASS) if e == 0])]
    picks = rng.choice(len(x), runs * model.batch, replace=len(x) < runs * model.batch)
    chosen = x[picks].reshape(runs, model.batch, *model.sample_shape).astype(np.float32)
    if family in ("early_exit", "exit_encoder") and distribution == "hard":
        chosen = np.clip(chosen + rng.normal(0, HARD_NOISE, chosen.shape), 0, 1).astype(np.float32)
    return [{model.input_name: sample} for sample in chosen]


def calibration_feeds(model: DataflowModel, runs: int = 32, seed: int = 1) -> list[dict[str, np.ndarray]]:
    """Training digits to calibrate ``model`` with: half from each of its two distributions."""
    first, second = DISTRIBUTIONS[family_of(model)]
    return (inputs(model, first, runs - runs // 2, seed=seed, training=True)
            + inputs(model, second, runs // 2, seed=seed + 1, training=True))


def family_of(model: DataflowModel) -> str:
    """The family (a key of :data:`DISTRIBUTIONS`) of one of this module's models."""
    return next(family for family, name in FAMILY_MODELS.items() if name == model.name)


def model_of(family: str) -> DataflowModel:
    """The model of a family (a key of :data:`DISTRIBUTIONS`), built or loaded from the cache."""
    builders = {"early_exit": early_exit_cnn, "moe": moe_mlp, "exit_encoder": exit_encoder_cnn}
    if family not in builders:
        raise BrazeError(f"unknown dataflow model family {family!r}; choose from {', '.join(builders)}")
    return builders[family]()
