"""The zoo's networks, written in torch: a ResNet-18-style and a MobileNetV2-style CNN, a 2-layer
transformer encoder and an MLP-Mixer, all small enough for the verilator device.

Every model reads scikit-learn's digits upsampled to ``1 x 16 x 16`` (:func:`digits_images`): the
CNNs and the mixer as images, the transformer as a sequence of 16 tokens (the image rows) of 16
features.  All four are trained briefly on the digits training split (a few seconds to a few
tens of seconds each, one thread).  The transformer and the mixer are held to issue 11's argmax
agreement target rather than accuracy; they are trained anyway because with torch's random
initialisation they predicted one or two classes for nearly every image (measured: the
transformer said 7 for 22 of 24 validation images), which makes argmax agreement a check that a
broken model passes.  Trained weights are cached under ``$BRAZE_CACHE_DIR/zoo`` keyed by a
hash of this file and the training settings, so that tests and benchmarks do not retrain.

The layers are the plain ones both of torch's ONNX exporters write as standard operators:
``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.Linear``, ``nn.LayerNorm``, ``nn.GELU``, ``torch.matmul``,
``torch.softmax``; attention is written out (no ``nn.MultiheadAttention``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from braze.isa.errors import BrazeError

from ..compiler.cache import cache_dir
from ..compiler.models import load_digits_split

__all__ = ["ZooSpec", "ZOO", "MODEL_NAMES", "digits_images", "build_model", "weights_path"]

#: Side of the upsampled digit images every zoo model reads.
IMAGE = 16
CLASSES = 10
#: Bumped when training changes in a way the hash of this file would not see (data, library).
WEIGHTS_VERSION = 1


def _torch():
    try:
        import torch
    except ImportError as err:     # torch is a development dependency
        raise BrazeError("the model zoo is built with torch: pip install -e '.[dev]'") from err
    return torch


@functools.cache
def digits_images() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits split as ``(n, 1, 16, 16)`` float32 images (each pixel repeated 2 x 2) and labels:
    ``x_train, y_train, x_val, y_val`` (read-only)."""
    data = load_digits_split()

    def up(flat: np.ndarray) -> np.ndarray:
        images = flat.reshape(-1, 1, 8, 8)
        return np.ascontiguousarray(images.repeat(2, axis=2).repeat(2, axis=3), dtype=np.float32)

    arrays = (up(data.x_train), np.asarray(data.y_train), up(data.x_val), np.asarray(data.y_val))
    for array in arrays:
        array.setflags(write=False)
    return arrays


# ---------------------------------------------------------------------------------------------------
# Networks (classes are built inside functions: torch is imported only when a model is built)
# ---------------------------------------------------------------------------------------------------

def _resnet(torch):
    nn = torch.nn

    class BasicBlock(nn.Module):
        """ResNet's basic block: two 3x3 convs with BN, a 1x1 strided projection when the shape changes."""

        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + (x if self.down is None else self.down(x)))

    class ResNet18(nn.Module):
        """ResNet-18's layout (stem, four stages of two basic blocks, stride 2 from the second stage,
        global average pool, FC) at widths 8-16-32-64 for 16x16 inputs."""

        def __init__(self, widths=(8, 16, 32, 64)):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                      nn.ReLU())
            blocks, cin = [], widths[0]
            for stage, width in enumerate(widths):
                for index in range(2):
                    blocks.append(BasicBlock(cin, width, 2 if stage > 0 and index == 0 else 1))
                    cin = width
            self.blocks = nn.Sequential(*blocks)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, CLASSES)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))

    return ResNet18()


def _mobilenet(torch):
    nn = torch.nn

    class InvertedResidual(nn.Module):
        """MobileNetV2's block: 1x1 expansion, depthwise 3x3, linear 1x1 projection; a residual when
        the stride is 1 and the width stays."""

        def __init__(self, cin: int, cout: int, stride: int, expand: int):
            super().__init__()
            hidden = cin * expand
            layers = []
            if expand != 1:
                layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
            layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                       nn.BatchNorm2d(hidden), nn.ReLU6(),
                       nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    class MobileNetV2(nn.Module):
        """MobileNetV2's layout (stem, inverted residual stages (t, c, n, s), 1x1 head conv, global
        average pool, FC) shrunk for 16x16 inputs."""

        def __init__(self, stages=((1, 8, 1, 1), (4, 16, 2, 2), (4, 24, 2, 2), (4, 32, 1, 2)), head=64):
            super().__init__()
            layers = [nn.Conv2d(1, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6()]
            cin = 8
            for expand, width, repeats, stride in stages:
                for index in range(repeats):
                    layers.append(InvertedResidual(cin, width, stride if index == 0 else 1, expand))
                    cin = width
            layers += [nn.Conv2d(cin, head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU6()]
            self.features = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(head, CLASSES)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    return MobileNetV2()


def _transformer(torch):
    nn = torch.nn

    class SelfAttention(nn.Module):
        def __init__(self, d: int, heads: int):
            super().__init__()
            self.heads, self.head_dim = heads, d // heads
            self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))

        def forward(self, x):
            batch, tokens, d = x.shape

            def split(t):                 # (b, t, d) -> (b, heads, t, head_dim)
                return t.reshape(batch, tokens, self.heads, self.head_dim).transpose(1, 2)

            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            scores = torch.matmul(q, k.transpose(-2, -1)) / self.head_dim ** 0.5
            context = torch.matmul(torch.softmax(scores, dim=-1), v)
            return self.out(context.transpose(1, 2).reshape(batch, tokens, d))

    class EncoderLayer(nn.Module):
        """Post-norm encoder layer (as ``nn.TransformerEncoderLayer``): attention, FFN with GELU."""

        def __init__(self, d: int, heads: int, ffn: int):
            super().__init__()
            self.attention = SelfAttention(d, heads)
            self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d))

        def forward(self, x):
            x = self.norm1(x + self.attention(x))
            return self.norm2(x + self.ffn(x))

    class Transformer(nn.Module):
        """Rows of a 16x16 digit as 16 tokens: embedding to d=64, learned positions, two encoder
        layers (4 heads, FFN 128), mean over tokens, classifier."""

        def __init__(self, d=64, heads=4, ffn=128, layers=2):
            super().__init__()
            self.embed = nn.Linear(IMAGE, d)
            self.position = nn.Parameter(torch.randn(IMAGE, d) * 0.1)
            self.layers = nn.Sequential(*(EncoderLayer(d, heads, ffn) for _ in range(layers)))
            self.head = nn.Linear(d, CLASSES)

        def forward(self, x):                     # x: (batch, 1, 16, 16)
            tokens = self.embed(torch.flatten(x, 1, 2)) + self.position
            return self.head(self.layers(tokens).mean(dim=1))

    return Transformer()


def _mixer(torch):
    nn = torch.nn

    class MixerBlock(nn.Module):
        def __init__(self, tokens: int, channels: int, token_hidden: int, channel_hidden: int):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(channels), nn.LayerNorm(channels)
            self.token_mlp = nn.Sequential(nn.Linear(tokens, token_hidden), nn.GELU(),
                                           nn.Linear(token_hidden, tokens))
            self.channel_mlp = nn.Sequential(nn.Linear(channels, channel_hidden), nn.GELU(),
                                             nn.Linear(channel_hidden, channels))

        def forward(self, x):                     # x: (batch, tokens, channels)
            x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
            return x + self.channel_mlp(self.norm2(x))

    class Mixer(nn.Module):
        """MLP-Mixer: 4x4 patches of a 16x16 digit (16 tokens) embedded to 32 channels by a strided
        conv, two mixer blocks, layer norm, mean over tokens, classifier."""

        def __init__(self, channels=32, blocks=2, patch=4):
            super().__init__()
            tokens = (IMAGE // patch) ** 2
            self.patches = nn.Conv2d(1, channels, patch, patch)
            self.blocks = nn.Sequential(*(MixerBlock(tokens, channels, 32, 64) for _ in range(blocks)))
            self.norm = nn.LayerNorm(channels)
            self.head = nn.Linear(channels, CLASSES)

        def forward(self, x):
            tokens = torch.flatten(self.patches(x), 2).transpose(1, 2)
            return self.head(self.norm(self.blocks(tokens)).mean(dim=1))

    return Mixer()


@dataclasses.dataclass(frozen=True)
class ZooSpec:
    """One zoo model: how to build it, whether and how long it is trained, and its target against
    onnxruntime's QDQ run: ``"accuracy"`` (within a point of onnxruntime's) or ``"agreement"``
    (argmax agreement, issue 11's target for the transformer and the mixer)."""

    name: str
    build: Callable
    trained: bool
    epochs: int = 0
    seed: int = 0
    target: str = "accuracy"


#: The zoo, in the order reports list it.
ZOO: dict[str, ZooSpec] = {spec.name: spec for spec in (
    ZooSpec("resnet18", _resnet, trained=True, epochs=6),
    ZooSpec("mobilenetv2", _mobilenet, trained=True, epochs=8),
    ZooSpec("transformer", _transformer, trained=True, epochs=8, target="agreement"),
    ZooSpec("mixer", _mixer, trained=True, epochs=8, target="agreement"),
)}
MODEL_NAMES = tuple(ZOO)


def _spec(name: str) -> ZooSpec:
    if name not in ZOO:
        raise BrazeError(f"no zoo model {name!r}; the zoo has {', '.join(MODEL_NAMES)}")
    return ZOO[name]


def weights_path(name: str) -> Path:
    """Where the trained weights of ``name`` are cached: keyed by this file's text and the settings."""
    spec = _spec(name)
    key = hashlib.sha256(Path(__file__).read_bytes()
                         + repr((spec.epochs, spec.seed, WEIGHTS_VERSION)).encode()).hexdigest()[:16]
    return cache_dir().parent / "zoo" / f"{name}-{key}.pt"


def _train(torch, model, spec: ZooSpec) -> None:
    """Adam on the digits training split, ``spec.epochs`` epochs, batches of 32, one thread."""
    x_train, y_train, _, _ = digits_images()
    generator = torch.Generator().manual_seed(spec.seed)
    x, y = torch.from_numpy(np.array(x_train)), torch.from_numpy(np.array(y_train))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(spec.epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 32):
            batch = order[start:start + 32]
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimiser.step()
    model.eval()


#: Training runs in a child process with torch's, oneDNN's and MKL's portable CPU kernels: their
#: vectorised kernels (AVX2, AVX-512 ...) round floats differently, so weights trained in-process
#: would depend on the CPU that filled the cache, and so would every margin measured on them.
PORTABLE_TRAINING_ENV = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                         "MKL_CBWR": "COMPATIBLE"}


def _train_portably(name: str) -> bool:
    """Train ``name`` (and cache its weights) in a child process under :data:`PORTABLE_TRAINING_ENV`;
    False when this already is that child, or the child could not cache the weights."""
    if all(os.environ.get(key) == value for key, value in PORTABLE_TRAINING_ENV.items()):
        return False
    child = subprocess.run([sys.executable, "-c", f"from braze.sw.zoo.models import build_model; "
                            f"build_model({name!r})"], env={**os.environ, **PORTABLE_TRAINING_ENV},
                           capture_output=True, text=True)
    if child.returncode != 0:
        raise BrazeError(f"training zoo model {name!r} failed:\n{child.stderr[-2000:]}")
    return weights_path(name).exists()


def build_model(name: str):
    """The zoo model ``name`` as a torch module in eval mode: trained weights (from the cache, or
    trained now and cached) or torch's initialisation under the spec's seed."""
    torch = _torch()
    spec = _spec(name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # deterministic, and kind to a loaded machine
    try:
        torch.manual_seed(spec.seed)
        model = spec.build(torch)
        if spec.trained:
            path = weights_path(name)
            if not path.exists():
                _train_portably(name)
            try:
                model.load_state_dict(torch.load(path, weights_only=True))
            except (OSError, RuntimeError, EOFError):
                with torch.enable_grad():     # the caller may be inside torch.no_grad()
                    _train(torch, model, spec)
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    buffer = io.BytesIO()
                    torch.save(model.state_dict(), buffer)
                    partial = path.with_suffix(".part")
                    partial.write_bytes(buffer.getvalue())
                    partial.replace(path)
                except OSError:
                    pass              # a read-only cache: train again next time
    finally:
        torch.set_num_threads(threads)
    return model.eval()
