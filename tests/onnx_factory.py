"""Tiny ONNX model files for the tests, written on demand.

Each public function writes one small model (well under 200 KB) into a given directory and
returns its :class:`~pathlib.Path`. Weights are drawn from a ``numpy``/``torch`` generator seeded
by the ``seed`` argument, never from global random state, so the same call writes the same
weights. The whole factory runs in a few seconds on a CPU.

The models imitate what third-party exporters write:

- torch (legacy TorchScript exporter, ``dynamo=False``): :func:`tiny_cnn`, :func:`tiny_cnn_nhwc`,
  :func:`channels1`, :func:`softmax_head`, :func:`caffe_style`, :func:`with_sidecar`,
  :func:`external_data`, :func:`odd_channels`, :func:`not_image_model`;
- tf2onnx (hand-built with :mod:`onnx.helper`): :func:`tf2onnx_style` (NHWC input, transposes,
  ``auto_pad="SAME_UPPER"`` convolutions and pools, ``SAME_LOWER`` average pool);
- older exporters (hand-built): :func:`slice_opset9` (``Slice`` with attributes),
  :func:`conv_same_dilated` (dilated ``SAME_LOWER`` convolution);
- activations (hand-built, NCHW as torch or NHWC as tf2onnx writes them): :func:`activation_cnn`
  and :func:`activation_probe` for every op of :data:`ACTIVATIONS` (rectifiers, smooth
  activations and their decompositions);
- grayscale: :func:`channels1` (NCHW), :func:`gray_nhwc`, :func:`gray_dynamic` (symbolic
  input size);
- broken or hostile files: :func:`external_data_outside`, :func:`random_bytes`,
  :func:`empty_file`, :func:`truncated`, :func:`invalid_graph`.

Classifier models have 10 classes. Unless stated otherwise the input is named ``"input"``
(``[N, C, H, W]``, float32, ``N`` symbolic) and the output ``"logits"`` (``[N, 10]``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.nn import functional as F

__all__ = [
    "ACTIVATIONS",
    "CAFFE_PREPROCESSING",
    "NUM_CLASSES",
    "PROBE_WEIGHTS",
    "activation_cnn",
    "activation_probe",
    "overlapping_pools",
    "caffe_style",
    "channels1",
    "conv_same_dilated",
    "empty_file",
    "external_data",
    "external_data_outside",
    "gray_dynamic",
    "gray_nhwc",
    "invalid_graph",
    "not_image_model",
    "odd_channels",
    "random_bytes",
    "slice_opset9",
    "softmax_head",
    "tf2onnx_style",
    "tiny_cnn",
    "tiny_cnn_nhwc",
    "truncated",
    "with_sidecar",
]

NUM_CLASSES = 10

#: Preprocessing recorded by :func:`caffe_style` under the ``"pyanalyzer.preprocessing"`` key.
CAFFE_PREPROCESSING = {
    "channel_order": "bgr",
    "scale": 1.0,
    "mean": [103.939, 116.779, 123.68],
    "std": [1, 1, 1],
    "layout": "nchw",
    "input_size": [32, 32],
    "resize": "stretch",
}

Batch = int | Literal["dynamic"]


# --------------------------------------------------------------------------- torch models


class _TinyCNN(nn.Module):
    """Conv-ReLU-MaxPool-BN-Conv-ReLU-MaxPool-Conv-ReLU-GAP-Flatten-Linear, 3->8->16->16."""

    def __init__(
        self,
        channels: int = 3,
        nhwc: bool = False,
        fixed_batch: bool = False,
        softmax: bool = False,
    ) -> None:
        super().__init__()
        self.nhwc = nhwc
        self.fixed_batch = fixed_batch
        self.softmax = softmax
        self.conv1 = nn.Conv2d(channels, 8, 3, padding=1)
        # BatchNorm after a pool, not after a conv, so that the exporter keeps the node
        # instead of folding it into the convolution's weights.
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = self.bn(x)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.adaptive_avg_pool2d(F.relu(self.conv3(x)), 1)
        # ``x.reshape(1, -1)`` is the hard-coded batch of many real exports (Reshape to [1, -1]).
        x = x.reshape(1, -1) if self.fixed_batch else torch.flatten(x, 1)
        x = self.fc(x)
        return F.softmax(x, dim=1) if self.softmax else x


class _MLP(nn.Module):
    def __init__(self, features: int = 20) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, 32)
        self.fc2 = nn.Linear(32, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def _init_weights(module: nn.Module, seed: int) -> nn.Module:
    """Fill every parameter and buffer from a generator seeded by ``seed``; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:  # BatchNorm gamma
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:  # He-like scale keeps activations O(1) through the layers
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
    return module.eval()


def _export(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    opset: int = 13,
    input_name: str = "input",
    output_name: str = "logits",
    dynamic_batch: bool = True,
) -> Path:
    """Export with the legacy TorchScript exporter, silencing its deprecation warnings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic_axes = {input_name: {0: "N"}, output_name: {0: "N"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    return path


def _check_batch(batch: Batch) -> bool:
    """Return True for a dynamic batch; raise for anything but "dynamic" or 1."""
    if batch == "dynamic":
        return True
    if batch == 1:
        return False
    raise ValueError(f"batch must be 'dynamic' or 1, got {batch!r}")


def tiny_cnn(
    dir: str | Path,
    opset: int = 13,
    batch: Batch = "dynamic",
    layout: Literal["nchw", "nhwc"] = "nchw",
    size: int = 32,
    channels: int = 3,
    *,
    seed: int = 0,
    name: str | None = None,
) -> Path:
    """A torch-exported classifier: Conv-ReLU-MaxPool-BN-Conv-ReLU-MaxPool-Conv-ReLU-GAP-Gemm.

    Args:
        dir: Directory to write into (created if missing).
        opset: ONNX opset, one of 9, 11, 13, 17.
        batch: ``"dynamic"`` (symbolic ``N``) or ``1``: the batch dim fixed to 1 in the graph
            and a ``Reshape`` to the constant shape ``[1, -1]`` (torch's ``x.view(1, -1)``)
            instead of ``Flatten``.
        layout: ``"nchw"`` (input ``[N, C, H, W]``) or ``"nhwc"`` (input ``[N, H, W, C]``
            followed by a ``Transpose`` inside the graph).
        size: Height and width of the input (>= 4; the global pool makes the head size-free,
            but the exported input shape is fixed to ``size``).
        channels: Input channels.
        seed: Weight seed.
        name: File name; by default one that encodes the arguments.

    Returns:
        Path of the ``.onnx`` file. Input ``"input"``, output ``"logits"`` ``[N, 10]``.
    """
    if opset not in (9, 11, 13, 17):
        raise ValueError(f"opset must be 9, 11, 13 or 17, got {opset}")
    if layout not in ("nchw", "nhwc"):
        raise ValueError(f"layout must be 'nchw' or 'nhwc', got {layout!r}")
    dynamic = _check_batch(batch)
    nhwc = layout == "nhwc"
    if name is None:
        name = f"tiny_cnn_op{opset}_{'dyn' if dynamic else 'b1'}_{layout}_{size}_c{channels}.onnx"
    model = _init_weights(_TinyCNN(channels, nhwc=nhwc, fixed_batch=not dynamic), seed)
    shape = (1, size, size, channels) if nhwc else (1, channels, size, size)
    return _export(model, torch.zeros(shape), Path(dir) / name, opset=opset, dynamic_batch=dynamic)


def tiny_cnn_nhwc(
    dir: str | Path,
    opset: int = 13,
    batch: Batch = "dynamic",
    size: int = 32,
    channels: int = 3,
    *,
    seed: int = 0,
    name: str | None = None,
) -> Path:
    """:func:`tiny_cnn` taking NHWC input ``[N, H, W, C]``, transposed to NCHW first thing."""
    return tiny_cnn(dir, opset, batch, "nhwc", size, channels, seed=seed, name=name)


def channels1(dir: str | Path, *, seed: int = 0, name: str = "channels1.onnx") -> Path:
    """A grayscale classifier: input ``[N, 1, 28, 28]`` (MNIST-like)."""
    return tiny_cnn(dir, size=28, channels=1, seed=seed, name=name)


def odd_channels(
    dir: str | Path, channels: int = 17, *, seed: int = 0, name: str = "odd_channels.onnx"
) -> Path:
    """A rank-4 CNN whose input has ``channels`` (17) channels: ``[N, 17, 32, 32]``.

    Valid ONNX, but not an image model by the loader's rules (images have 1, 3 or 4 channels):
    the loader should refuse it, or accept it only with an explicit preprocessing spec.
    """
    return tiny_cnn(dir, channels=channels, seed=seed, name=name)


class _ReLU6CNN(nn.Module):
    """Conv-ReLU6-Conv-ReLU6-GAP-Linear (MobileNet's activation; ONNX ``Clip(0, 6)``)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, stride=2, padding=1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.conv2(F.relu6(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def relu6_cnn(dir: str | Path, *, seed: int = 0, name: str = "relu6_cnn.onnx") -> Path:
    """A 32x32 RGB classifier with ReLU6 activations; unit 0 of its second ReLU6 is dead
    (below 0 everywhere) on flat images from black to white, by half a unit."""
    model = _init_weights(_ReLU6CNN(), seed)
    with torch.no_grad():
        flats = torch.linspace(0, 1, 11).view(-1, 1, 1, 1).expand(-1, 3, 32, 32)
        pre = model.conv2(F.relu6(model.conv1(flats)))[:, 0]
        model.conv2.bias[0] -= pre.max() + 0.5
    return _export(model, torch.zeros(1, 3, 32, 32), Path(dir) / name)


def softmax_head(dir: str | Path, *, seed: int = 0, name: str = "softmax_head.onnx") -> Path:
    """A classifier ending in ``Softmax``: output ``"probs"`` ``[N, 10]``.

    The logits are the ``Softmax`` node's input (the ``Gemm`` output), for class objectives.
    """
    model = _init_weights(_TinyCNN(softmax=True), seed)
    return _export(model, torch.zeros(1, 3, 32, 32), Path(dir) / name, output_name="probs")


def caffe_style(dir: str | Path, *, seed: int = 0, name: str = "caffe_style.onnx") -> Path:
    """A caffe-converted style classifier: BGR 0-255 input ``"data"``, ``Softmax`` ``"prob"``.

    Records :data:`CAFFE_PREPROCESSING` as JSON in the model's ``metadata_props`` under the key
    ``"pyanalyzer.preprocessing"``.
    """
    model = _init_weights(_TinyCNN(softmax=True), seed)
    path = _export(
        model, torch.zeros(1, 3, 32, 32), Path(dir) / name, input_name="data", output_name="prob"
    )
    proto = onnx.load(path)
    onnx.helper.set_model_props(
        proto, {"pyanalyzer.preprocessing": json.dumps(CAFFE_PREPROCESSING)}
    )
    onnx.save(proto, path)
    return path


def with_sidecar(dir: str | Path, *, seed: int = 0, name: str = "sidecar.onnx") -> Path:
    """A plain :func:`tiny_cnn` with a sidecar ``<file name>.json`` (``sidecar.onnx.json``).

    The sidecar holds ``{"preset": "imagenet"}``. Returns the model's path.
    """
    path = tiny_cnn(dir, seed=seed, name=name)
    path.with_name(path.name + ".json").write_text(json.dumps({"preset": "imagenet"}))
    return path


def not_image_model(dir: str | Path, *, seed: int = 0, name: str = "mlp.onnx") -> Path:
    """A valid ONNX MLP whose input is ``[N, 20]`` float: loads, but is not an image model."""
    model = _init_weights(_MLP(20), seed)
    return _export(model, torch.zeros(1, 20), Path(dir) / name)


def external_data(
    dir: str | Path,
    location: str | None = None,
    *,
    seed: int = 0,
    name: str = "external.onnx",
) -> Path:
    """:func:`tiny_cnn` with all its initializers in one external file next to the model.

    Args:
        dir: Directory to write into.
        location: The external file's name, relative to the model (default ``"weights.bin"``).
        seed: Weight seed.
        name: File name of the model.
    """
    location = "weights.bin" if location is None else location
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    proto = onnx.load(tiny_cnn(dir, seed=seed, name=f".{name}.tmp"))
    (dir / f".{name}.tmp").unlink()
    path = dir / name
    onnx.save_model(
        proto,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    return path


def external_data_outside(
    dir: str | Path,
    kind: Literal["parent", "absolute", "passwd"] = "parent",
    *,
    seed: int = 0,
) -> Path:
    """A model whose external-data ``location`` points outside the model's folder.

    The model is written to ``dir/model/outside_<kind>.onnx``. Every referenced file exists
    and holds the right bytes (except for ``"passwd"``), so only a location check catches it:

    - ``"parent"``: location ``"../evil.bin"``; ``dir/evil.bin`` holds the real weights.
    - ``"absolute"``: location is the absolute path of ``dir/abs_weights.bin`` (real weights).
    - ``"passwd"``: one small tensor (the first conv's bias, 32 bytes) points at
      ``"/etc/passwd"`` offset 0; the others stay in ``weights.bin`` inside the folder. Loading
      it without a location check reads that file's bytes as weights.
    """
    dir = Path(dir).resolve()
    model_dir = dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / f"outside_{kind}.onnx"
    if kind == "passwd":
        # Save normally (inside the folder), then repoint one tensor.
        external_data(model_dir, seed=seed, name=path.name, location=f"{path.stem}.bin")
        proto = onnx.load(path, load_external_data=False)
        target = next(t for t in proto.graph.initializer if t.name == "conv1.bias")
        nbytes = int(np.prod(target.dims)) * 4
        _set_external(target, "/etc/passwd", offset=0, length=nbytes)
        onnx.save(proto, path)
        return path
    if kind == "parent":
        outside, location = dir / "evil.bin", "../evil.bin"
    elif kind == "absolute":
        outside = dir / "abs_weights.bin"
        location = str(outside)
    else:
        raise ValueError(f"kind must be 'parent', 'absolute' or 'passwd', got {kind!r}")
    # Save with the weights in the model folder, move the file outside, repoint every tensor.
    inside = f"{path.stem}.bin"
    external_data(model_dir, seed=seed, name=path.name, location=inside)
    (model_dir / inside).replace(outside)
    proto = onnx.load(path, load_external_data=False)
    for t in proto.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in t.external_data}
            _set_external(
                t, location, offset=int(entries.get("offset", 0)), length=int(entries["length"])
            )
    onnx.save(proto, path)
    return path


def _set_external(tensor: TensorProto, location: str, *, offset: int, length: int) -> None:
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)
    tensor.data_location = TensorProto.EXTERNAL


# --------------------------------------------------------------------------- hand-built graphs


def _he(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _bias(rng: np.random.Generator, n: int) -> np.ndarray:
    return (0.1 * rng.standard_normal(n)).astype(np.float32)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def tf2onnx_style(
    dir: str | Path, opset: int = 13, *, seed: int = 0, name: str = "tf2onnx_style.onnx"
) -> Path:
    """A hand-built imitation of a tf2onnx export of a small Keras CNN.

    Input ``"input_1:0"`` ``[unk__6, 32, 32, 3]`` (NHWC, symbolic batch), output ``"dense"``
    ``[unk__6, 10]`` (softmax probabilities; the logits are ``"model/dense/BiasAdd:0"``).
    Graph, with spatial sizes::

        Transpose [0,3,1,2]                                          32x32x3 -> 3x32x32
        Conv 3->8   k3 s1 SAME_UPPER + Relu                          -> 8x32x32
        Conv 8->16  k3 s2 SAME_UPPER + Relu   (pads 0 before, 1 after)  -> 16x16x16
        Conv 16->16 k2 s1 VALID + Relu                               -> 16x15x15
        MaxPool k2 s2 SAME_UPPER              (odd size: pads 0/1)   -> 16x8x8
        AveragePool k2 s1 SAME_LOWER, count_include_pad=0 (pads 1/0) -> 16x8x8
        Transpose [0,2,3,1], Transpose [0,3,1,2]     (the chain tf2onnx leaves)
        GlobalAveragePool, Reshape [-1, 16], MatMul [16,10], Add, Softmax

    Args:
        dir: Directory to write into.
        opset: 11 or 13.
        seed: Weight seed.
        name: File name.
    """
    if opset not in (11, 13):
        raise ValueError(f"opset must be 11 or 13, got {opset}")
    rng = np.random.default_rng(seed)
    p = "StatefulPartitionedCall/model"
    w = {
        f"{p}/conv2d/Conv2D/ReadVariableOp:0": _he(rng, (8, 3, 3, 3)),
        f"{p}/conv2d/BiasAdd/ReadVariableOp:0": _bias(rng, 8),
        f"{p}/conv2d_1/Conv2D/ReadVariableOp:0": _he(rng, (16, 8, 3, 3)),
        f"{p}/conv2d_1/BiasAdd/ReadVariableOp:0": _bias(rng, 16),
        f"{p}/conv2d_2/Conv2D/ReadVariableOp:0": _he(rng, (16, 16, 2, 2)),
        f"{p}/conv2d_2/BiasAdd/ReadVariableOp:0": _bias(rng, 16),
        f"{p}/dense/MatMul/ReadVariableOp:0": _he(rng, (16, NUM_CLASSES)[::-1]).T.copy(),
        f"{p}/dense/BiasAdd/ReadVariableOp:0": _bias(rng, NUM_CLASSES),
        "const_fold_opt__12": np.array([-1, 16], dtype=np.int64),
    }
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]

    def conv(i: int, x: str, out: str, stride: int, auto_pad: str) -> onnx.NodeProto:
        layer = "conv2d" if i == 0 else f"conv2d_{i}"
        wname = f"{p}/{layer}/Conv2D/ReadVariableOp:0"
        k = w[wname].shape[2]
        return helper.make_node(
            "Conv",
            [x, wname, f"{p}/{layer}/BiasAdd/ReadVariableOp:0"],
            [out],
            name=f"{p}/{layer}/BiasAdd",
            kernel_shape=[k, k],
            strides=[stride, stride],
            dilations=[1, 1],
            auto_pad=auto_pad,
        )

    nodes = [
        helper.make_node(
            "Transpose",
            ["input_1:0"],
            [f"{p}/conv2d/BiasAdd__6:0"],
            name=f"{p}/conv2d/BiasAdd__6",
            perm=[0, 3, 1, 2],
        ),
        conv(0, f"{p}/conv2d/BiasAdd__6:0", f"{p}/conv2d/BiasAdd:0", 1, "SAME_UPPER"),
        helper.make_node(
            "Relu", [f"{p}/conv2d/BiasAdd:0"], [f"{p}/conv2d/Relu:0"], name=f"{p}/conv2d/Relu"
        ),
        conv(1, f"{p}/conv2d/Relu:0", f"{p}/conv2d_1/BiasAdd:0", 2, "SAME_UPPER"),
        helper.make_node(
            "Relu",
            [f"{p}/conv2d_1/BiasAdd:0"],
            [f"{p}/conv2d_1/Relu:0"],
            name=f"{p}/conv2d_1/Relu",
        ),
        conv(2, f"{p}/conv2d_1/Relu:0", f"{p}/conv2d_2/BiasAdd:0", 1, "VALID"),
        helper.make_node(
            "Relu",
            [f"{p}/conv2d_2/BiasAdd:0"],
            [f"{p}/conv2d_2/Relu:0"],
            name=f"{p}/conv2d_2/Relu",
        ),
        helper.make_node(
            "MaxPool",
            [f"{p}/conv2d_2/Relu:0"],
            [f"{p}/max_pooling2d/MaxPool:0"],
            name=f"{p}/max_pooling2d/MaxPool",
            kernel_shape=[2, 2],
            strides=[2, 2],
            auto_pad="SAME_UPPER",
        ),
        helper.make_node(
            "AveragePool",
            [f"{p}/max_pooling2d/MaxPool:0"],
            [f"{p}/average_pooling2d/AvgPool:0"],
            name=f"{p}/average_pooling2d/AvgPool",
            kernel_shape=[2, 2],
            strides=[1, 1],
            auto_pad="SAME_LOWER",
            count_include_pad=0,
        ),
        helper.make_node(
            "Transpose",
            [f"{p}/average_pooling2d/AvgPool:0"],
            [f"{p}/average_pooling2d/AvgPool__28:0"],
            name=f"{p}/average_pooling2d/AvgPool__28",
            perm=[0, 2, 3, 1],
        ),
        helper.make_node(
            "Transpose",
            [f"{p}/average_pooling2d/AvgPool__28:0"],
            [f"{p}/global_average_pooling2d/Mean__31:0"],
            name=f"{p}/global_average_pooling2d/Mean__31",
            perm=[0, 3, 1, 2],
        ),
        helper.make_node(
            "GlobalAveragePool",
            [f"{p}/global_average_pooling2d/Mean__31:0"],
            [f"{p}/global_average_pooling2d/Mean_Squeeze__33:0"],
            name=f"{p}/global_average_pooling2d/Mean_Squeeze__33",
        ),
        helper.make_node(
            "Reshape",
            [f"{p}/global_average_pooling2d/Mean_Squeeze__33:0", "const_fold_opt__12"],
            [f"{p}/global_average_pooling2d/Mean:0"],
            name=f"{p}/global_average_pooling2d/Mean",
        ),
        helper.make_node(
            "MatMul",
            [f"{p}/global_average_pooling2d/Mean:0", f"{p}/dense/MatMul/ReadVariableOp:0"],
            [f"{p}/dense/MatMul:0"],
            name=f"{p}/dense/MatMul",
        ),
        helper.make_node(
            "Add",
            [f"{p}/dense/MatMul:0", f"{p}/dense/BiasAdd/ReadVariableOp:0"],
            [f"{p}/dense/BiasAdd:0"],
            name=f"{p}/dense/BiasAdd",
        ),
        helper.make_node(
            "Softmax", [f"{p}/dense/BiasAdd:0"], ["dense"], name=f"{p}/dense/Softmax", axis=1
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "tf2onnx",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["unk__6", 32, 32, 3])],
        [helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["unk__6", NUM_CLASSES])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("ai.onnx.ml", 2)],
        producer_name="tf2onnx",
        producer_version="1.16.1 15c810",
        ir_version=7 if opset == 13 else 6,
    )
    model.doc_string = "converted from model"
    return _save(model, Path(dir) / name)


def slice_opset9(dir: str | Path, *, seed: int = 0, name: str = "slice_opset9.onnx") -> Path:
    """An opset-9 CNN with a ``Slice`` that takes ``starts``/``ends``/``axes`` as attributes.

    Input ``"input"`` ``[N, 3, 32, 32]``::

        Conv 3->8 k3 pads 1 + Relu                               -> 8x32x32
        Slice axes [2,3] starts [2,2] ends [-2,-2] (crop 2 px)   -> 8x28x28
        MaxPool k2 s2                                            -> 8x14x14
        Conv 8->16 k3 pads 1 + Relu, GlobalAveragePool, Flatten, Gemm -> [N, 10]
    """
    rng = np.random.default_rng(seed)
    w = {
        "conv1.weight": _he(rng, (8, 3, 3, 3)),
        "conv1.bias": _bias(rng, 8),
        "conv2.weight": _he(rng, (16, 8, 3, 3)),
        "conv2.bias": _bias(rng, 16),
        "fc.weight": _he(rng, (NUM_CLASSES, 16)),
        "fc.bias": _bias(rng, NUM_CLASSES),
    }
    nodes = [
        helper.make_node(
            "Conv",
            ["input", "conv1.weight", "conv1.bias"],
            ["c1"],
            name="/conv1/Conv",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", ["c1"], ["r1"], name="/Relu"),
        helper.make_node(
            "Slice", ["r1"], ["crop"], name="/Slice", axes=[2, 3], starts=[2, 2], ends=[-2, -2]
        ),
        helper.make_node(
            "MaxPool", ["crop"], ["p1"], name="/MaxPool", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node(
            "Conv",
            ["p1", "conv2.weight", "conv2.bias"],
            ["c2"],
            name="/conv2/Conv",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", ["c2"], ["r2"], name="/Relu_1"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="/GlobalAveragePool"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="/Flatten", axis=1),
        helper.make_node(
            "Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="/fc/Gemm", transB=1
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "slice_opset9",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES])],
        initializer=[numpy_helper.from_array(v, k) for k, v in w.items()],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 9)],
        producer_name="pytorch",
        ir_version=4,
    )
    return _save(model, Path(dir) / name)


def conv_same_dilated(
    dir: str | Path,
    explicit_pads: bool = False,
    *,
    seed: int = 0,
    name: str | None = None,
) -> Path:
    """A CNN with dilated ``SAME_LOWER`` convolutions (asymmetric padding).

    Input ``"input"`` ``[N, 3, 32, 32]``::

        Conv 3->8 k3 dilation 2 stride 2 SAME_LOWER + Relu  (pads 2 before, 1 after) -> 8x16x16
        Conv 8->16 k3 dilation 2 stride 1 SAME_LOWER + Relu (pads 2/2)              -> 16x16x16
        GlobalAveragePool, Flatten, Gemm -> [N, 10]

    onnxruntime (1.32) refuses dilated ``SAME_*`` convolutions *at run time* (session creation
    succeeds; ``run`` raises "Dilation not supported for AutoPadType::SAME_UPPER or
    AutoPadType::SAME_LOWER"), so a loader's trial forward pass must catch it. With
    ``explicit_pads=True`` the same weights are written with the equivalent explicit ``pads``
    (``[2, 2, 1, 1]`` and ``[2, 2, 2, 2]``), which onnxruntime runs: the reference.
    """
    if name is None:
        name = "conv_same_dilated" + ("_pads" if explicit_pads else "") + ".onnx"
    pad_attrs = (
        [{"pads": [2, 2, 1, 1]}, {"pads": [2, 2, 2, 2]}]
        if explicit_pads
        else [{"auto_pad": "SAME_LOWER"}, {"auto_pad": "SAME_LOWER"}]
    )
    rng = np.random.default_rng(seed)
    w = {
        "conv1.weight": _he(rng, (8, 3, 3, 3)),
        "conv1.bias": _bias(rng, 8),
        "conv2.weight": _he(rng, (16, 8, 3, 3)),
        "conv2.bias": _bias(rng, 16),
        "fc.weight": _he(rng, (NUM_CLASSES, 16)),
        "fc.bias": _bias(rng, NUM_CLASSES),
    }
    nodes = [
        helper.make_node(
            "Conv",
            ["input", "conv1.weight", "conv1.bias"],
            ["c1"],
            name="conv1",
            kernel_shape=[3, 3],
            dilations=[2, 2],
            strides=[2, 2],
            **pad_attrs[0],
        ),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv",
            ["r1", "conv2.weight", "conv2.bias"],
            ["c2"],
            name="conv2",
            kernel_shape=[3, 3],
            dilations=[2, 2],
            strides=[1, 1],
            **pad_attrs[1],
        ),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_same_dilated",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES])],
        initializer=[numpy_helper.from_array(v, k) for k, v in w.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    return _save(model, Path(dir) / name)


# --------------------------------------------------------------------------- activations

#: Activations that :func:`activation_cnn` and :func:`activation_probe` build, by name: the
#: ONNX op of the same name, or (``"Relu6"``... ``"SoftplusDecomposed"``) the graph below.
#:
#: - ``"Relu6"``: ``Clip(0, 6)``; ``"ClipMin0"``: ``Clip(0, none)``; ``"Clip0_2"``:
#:   ``Clip(0, 2)``; ``"ClipSym"``: ``Clip(-1, 1)`` (a saturation, not a rectifier). Before
#:   opset 11 the bounds are attributes; from 11 on the min is a ``Constant`` node's output and
#:   the max an initializer, as exporters write them.
#: - ``"LeakyRelu"``: alpha 0.1; ``"PRelu"``: one slope per channel (``[C, 1, 1]`` in NCHW,
#:   ``[1, 1, C]`` in NHWC, as tf2onnx writes Keras' shared-axes PReLU); ``"PReluScalar"``:
#:   slope ``[1]``, 0.2.
#: - ``"HardSigmoid"``: alpha 0.25, beta 0.4; ``"Elu"``: alpha 0.7; ``"Celu"``: alpha 1.3;
#:   ``"Selu"``: the defaults; ``"Gelu"`` (opset 20) and ``"Mish"`` (opset 18): the fused ops,
#:   which onnx2torch cannot convert yet.
#: - Decompositions: ``"GeluErf"`` ``x * 0.5 * (1 + erf(x / sqrt 2))``, ``"GeluTanh"``
#:   ``0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x ** 3)))`` (with ``Pow``),
#:   ``"MishDecomposed"`` ``x * tanh(softplus(x))``, ``"Swish"`` ``x * sigmoid(x)``,
#:   ``"HardSwishDecomposed"`` ``x * HardSigmoid(x; 1/6, 1/2)`` (opset < 14 exports),
#:   ``"SoftplusDecomposed"`` ``log(exp(x) + 1)``; ``"Square"``: ``Mul(x, x)``, one tensor read
#:   twice.
ACTIVATIONS = (
    "Relu", "Relu6", "ClipMin0", "Clip0_2", "ClipSym", "LeakyRelu", "PRelu", "PReluScalar",
    "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu", "Softplus", "Softsign",
    "Gelu", "Mish", "GeluErf", "GeluTanh", "MishDecomposed", "Swish", "HardSwishDecomposed",
    "SoftplusDecomposed", "Square",
)  # fmt: skip

_MIN_OPSET = {"HardSwish": 14, "Celu": 12, "Mish": 18, "Gelu": 20}


def _activation_nodes(
    op: str, x: str, out: str, channels: int, layout: str, opset: int, rng: np.random.Generator
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """The nodes (and initializers) of activation ``op`` from tensor ``x`` to tensor ``out``."""
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []

    def const(tag: str, value: float | np.ndarray) -> str:
        name = f"{out}/{tag}"
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(op_type: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def t(tag: str) -> str:
        return f"{out}/{tag}"

    clips = {"Relu6": (0.0, 6.0), "ClipMin0": (0.0, None), "Clip0_2": (0.0, 2.0),
             "ClipSym": (-1.0, 1.0)}  # fmt: skip
    if op in clips:
        low, high = clips[op]
        if opset < 11:
            attrs = {"min": low} if high is None else {"min": low, "max": high}
            node("Clip", [x], out, **attrs)
        else:
            nodes.append(
                helper.make_node(
                    "Constant", [], [t("min")], name=t("min"),
                    value=numpy_helper.from_array(np.asarray(low, np.float32)),
                )
            )  # fmt: skip
            node("Clip", [x, t("min")] + ([] if high is None else [const("max", high)]), out)
    elif op == "LeakyRelu":
        node("LeakyRelu", [x], out, alpha=0.1)
    elif op == "PRelu":
        slope = rng.uniform(0.05, 0.5, channels).astype(np.float32)
        shape = (channels, 1, 1) if layout == "nchw" else (1, 1, channels)
        node("PRelu", [x, const("slope", slope.reshape(shape))], out)
    elif op == "PReluScalar":
        node("PRelu", [x, const("slope", np.array([0.2]))], out)
    elif op == "HardSigmoid":
        node("HardSigmoid", [x], out, alpha=0.25, beta=0.4)
    elif op == "Elu":
        node("Elu", [x], out, alpha=0.7)
    elif op == "Celu":
        node("Celu", [x], out, alpha=1.3)
    elif op in ("Relu", "Sigmoid", "Tanh", "HardSwish", "Selu", "Softplus", "Softsign", "Mish"):
        node(op, [x], out)
    elif op == "Gelu":
        node("Gelu", [x], out, approximate="none")
    elif op == "GeluErf":  # torch's export of F.gelu before opset 20
        node("Div", [x, const("sqrt2", np.sqrt(2.0))], t("div"))
        node("Erf", [t("div")], t("erf"))
        node("Add", [t("erf"), const("one", 1.0)], t("add"))
        node("Mul", [x, t("add")], t("mul"))
        node("Mul", [t("mul"), const("half", 0.5)], out)
    elif op == "GeluTanh":  # F.gelu(approximate="tanh") / Keras gelu(approximate=True)
        node("Pow", [x, const("three", 3.0)], t("cube"))
        node("Mul", [t("cube"), const("c", 0.044715)], t("cubic"))
        node("Add", [x, t("cubic")], t("inner"))
        node("Mul", [t("inner"), const("k", np.sqrt(2.0 / np.pi))], t("scaled"))
        node("Tanh", [t("scaled")], t("tanh"))
        node("Add", [t("tanh"), const("one", 1.0)], t("add"))
        node("Mul", [x, t("add")], t("mul"))
        node("Mul", [t("mul"), const("half", 0.5)], out)
    elif op == "MishDecomposed":  # torch's export of F.mish before opset 18
        node("Softplus", [x], t("softplus"))
        node("Tanh", [t("softplus")], t("tanh"))
        node("Mul", [x, t("tanh")], out)
    elif op == "Swish":
        node("Sigmoid", [x], t("sigmoid"))
        node("Mul", [x, t("sigmoid")], out)
    elif op == "HardSwishDecomposed":
        node("HardSigmoid", [x], t("hsig"), alpha=1.0 / 6.0, beta=0.5)
        node("Mul", [x, t("hsig")], out)
    elif op == "SoftplusDecomposed":
        node("Exp", [x], t("exp"))
        node("Add", [t("exp"), const("one", 1.0)], t("add"))
        node("Log", [t("add")], out)
    elif op == "Square":
        node("Mul", [x, x], out)
    else:
        raise ValueError(f"unknown activation {op!r}; choose one of {', '.join(ACTIVATIONS)}")
    return nodes, inits


def _activation_opset(op: str, opset: int | None) -> int:
    need = _MIN_OPSET.get(op, 9)
    if opset is None:
        return max(13, need)
    if opset < need:
        raise ValueError(f"{op} needs opset {need} or later, got {opset}")
    return opset


def _activation_model(graph: onnx.GraphProto, opset: int) -> onnx.ModelProto:
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9 if opset >= 19 else 8
    )


def activation_cnn(
    dir: str | Path,
    op: str,
    layout: Literal["nchw", "nhwc"] = "nchw",
    *,
    opset: int | None = None,
    size: int = 8,
    seed: int = 0,
    name: str | None = None,
) -> Path:
    """A small CNN whose two activations are ``op`` (one of :data:`ACTIVATIONS`).

    NCHW (as torch exports), input ``"input"`` ``[N, 3, size, size]``::

        Conv 3->4 k3 pads 1 (tensor "conv1") -> op ("act1") -> Conv 4->4 k3 pads 1 ("conv2")
        -> op ("act2") -> GlobalAveragePool, Flatten, Gemm -> "logits" [N, 10]

    NHWC (as tf2onnx exports Keras), input ``[N, size, size, 3]``: each convolution between
    ``Transpose`` [0,3,1,2] and [0,2,3,1], the activations computed in NHWC (``"act1"``,
    ``"act2"`` are ``[N, size, size, 4]``), then ``Transpose``, ``GlobalAveragePool``,
    ``Flatten``, ``MatMul``, ``Add``.

    Args:
        dir: Directory to write into.
        op: the activation.
        layout: ``"nchw"`` or ``"nhwc"``.
        opset: default 13, or the op's first opset (HardSwish 14, Mish 18, Gelu 20); before
            11 the Clips carry their bounds as attributes.
        size: Height and width.
        seed: Weight seed.
        name: File name (default ``act_<op>_<layout>_op<opset>.onnx``).
    """
    if layout not in ("nchw", "nhwc"):
        raise ValueError(f"layout must be 'nchw' or 'nhwc', got {layout!r}")
    opset = _activation_opset(op, opset)
    rng = np.random.default_rng(seed)
    w = {
        "conv1.weight": _he(rng, (4, 3, 3, 3)),
        "conv1.bias": _bias(rng, 4),
        "conv2.weight": _he(rng, (4, 4, 3, 3)),
        "conv2.bias": _bias(rng, 4),
        "fc.weight": _he(rng, (NUM_CLASSES, 4)),
        "fc.bias": _bias(rng, NUM_CLASSES),
    }
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    nodes: list[onnx.NodeProto] = []
    nhwc = layout == "nhwc"
    x = "input"
    for i in (1, 2):
        if nhwc:
            nodes.append(
                helper.make_node("Transpose", [x], [f"to_nchw{i}"], name=f"to_nchw{i}",
                                 perm=[0, 3, 1, 2])
            )  # fmt: skip
            x = f"to_nchw{i}"
        conv_out = f"conv{i}" if not nhwc else f"conv{i}_nchw"
        nodes.append(
            helper.make_node(
                "Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [conv_out], name=f"conv{i}",
                kernel_shape=[3, 3], pads=[1, 1, 1, 1],
            )
        )  # fmt: skip
        x = conv_out
        if nhwc:
            nodes.append(
                helper.make_node("Transpose", [x], [f"conv{i}"], name=f"conv{i}_nhwc",
                                 perm=[0, 2, 3, 1])
            )  # fmt: skip
            x = f"conv{i}"
        more, more_inits = _activation_nodes(op, x, f"act{i}", 4, layout, opset, rng)
        nodes += more
        inits += more_inits
        x = f"act{i}"
    if nhwc:  # tf2onnx's global average pool: back to NCHW, GlobalAveragePool, MatMul, Add
        fc = next(i for i, t in enumerate(inits) if t.name == "fc.weight")
        inits[fc] = numpy_helper.from_array(w["fc.weight"].T.copy(), "fc.weight")
        nodes += [
            helper.make_node("Transpose", [x], ["to_nchw3"], name="to_nchw3", perm=[0, 3, 1, 2]),
            helper.make_node("GlobalAveragePool", ["to_nchw3"], ["gap"], name="gap"),
            helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
            helper.make_node("MatMul", ["flat", "fc.weight"], ["fc_mm"], name="fc_mm"),
            helper.make_node("Add", ["fc_mm", "fc.bias"], ["logits"], name="fc_add"),
        ]
        in_shape: list[int | str] = ["N", size, size, 3]
    else:
        nodes += [
            helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
            helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
            helper.make_node(
                "Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1
            ),
        ]
        in_shape = ["N", 3, size, size]
    graph = helper.make_graph(
        nodes,
        f"act_{op}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES])],
        initializer=inits,
    )
    name = name or f"act_{op}_{layout}_op{opset}.onnx"
    return _save(_activation_model(graph, opset), Path(dir) / name)


#: The 1x1 convolution of :func:`activation_probe`, per input channel.
PROBE_WEIGHTS = (1.0, -1.0, 0.5)


def activation_probe(
    dir: str | Path,
    op: str,
    *,
    opset: int | None = None,
    size: int = 4,
    name: str | None = None,
) -> Path:
    """The smallest graph to check a projection rule by hand: ``op`` on the input, then a
    1x1 convolution with weights :data:`PROBE_WEIGHTS` and no bias::

        "input" [N, 3, size, size] -> op ("act", [N, 3, size, size])
                                   -> Conv 3->1 k1 ("y", [N, 1, size, size], the output)

    Projecting ``y`` sends ``PROBE_WEIGHTS[c] * y`` to channel ``c`` of ``act``: signals of
    both signs reach the op wherever its input is positive or negative.

    Args:
        op: one of :data:`ACTIVATIONS` (PRelu's slope is per channel, seeded by 0).
        opset, size, name: as :func:`activation_cnn`.
    """
    opset = _activation_opset(op, opset)
    nodes, inits = _activation_nodes(op, "input", "act", 3, "nchw", opset,
                                     np.random.default_rng(0))  # fmt: skip
    w = np.asarray(PROBE_WEIGHTS, np.float32).reshape(1, 3, 1, 1)
    inits.append(numpy_helper.from_array(w, "probe.weight"))
    nodes.append(helper.make_node("Conv", ["act", "probe.weight"], ["y"], name="probe"))
    graph = helper.make_graph(
        nodes,
        f"probe_{op}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, size, size])],
        initializer=inits,
    )
    name = name or f"probe_{op}_op{opset}.onnx"
    return _save(_activation_model(graph, opset), Path(dir) / name)


# --------------------------------------------------------------------------- grayscale


def gray_nhwc(dir: str | Path, *, seed: int = 0, name: str = "gray_nhwc.onnx") -> Path:
    """:func:`channels1` taking NHWC input ``[N, 28, 28, 1]`` (a Keras MNIST export)."""
    return tiny_cnn(dir, layout="nhwc", size=28, channels=1, seed=seed, name=name)


def gray_dynamic(dir: str | Path, *, seed: int = 0, name: str = "gray_dynamic.onnx") -> Path:
    """A grayscale :func:`tiny_cnn` whose input size is symbolic: ``[N, 1, H, W]`` (the global
    pool makes any size from 4 on work); the loader needs ``--input-size``."""
    model = _init_weights(_TinyCNN(1), seed)
    path = Path(dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False, opset_version=13,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}, "logits": {0: "N"}},
        )  # fmt: skip
    return path


# --------------------------------------------------------------------------- broken files


def random_bytes(
    dir: str | Path, n: int = 4096, *, seed: int = 0, name: str = "random.onnx"
) -> Path:
    """``n`` random bytes with an ``.onnx`` name: :func:`onnx.load` raises on them."""
    path = Path(dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).bytes(n))
    return path


def empty_file(dir: str | Path, *, name: str = "empty.onnx") -> Path:
    """A zero-byte ``.onnx`` file.

    Note: protobuf parses zero bytes as an empty ``ModelProto``, so :func:`onnx.load` does
    *not* raise; :func:`onnx.checker.check_model` and onnxruntime do. A loader must check.
    """
    path = Path(dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def truncated(dir: str | Path, *, seed: int = 0, name: str = "truncated.onnx") -> Path:
    """The first half of a valid :func:`tiny_cnn` file (cut inside a weight): load raises."""
    dir = Path(dir)
    full = tiny_cnn(dir, seed=seed, name=f".{name}.full")
    data = full.read_bytes()
    full.unlink()
    path = dir / name
    path.write_bytes(data[: len(data) // 2])
    return path


def invalid_graph(
    dir: str | Path,
    kind: Literal["dangling", "type"] = "dangling",
    *,
    seed: int = 0,
    name: str | None = None,
) -> Path:
    """A file that parses as ONNX but fails ``onnx.checker.check_model(full_check=True)``.

    - ``"dangling"``: the second ``Conv`` reads a tensor ``"missing"`` that nothing produces.
    - ``"type"``: a bias initializer is float64 while the input and weight are float32.
    """
    if kind not in ("dangling", "type"):
        raise ValueError(f"kind must be 'dangling' or 'type', got {kind!r}")
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(_he(rng, (8, 3, 3, 3)), "conv1.weight")
    bias = _bias(rng, 8)
    b1 = numpy_helper.from_array(bias.astype(np.float64) if kind == "type" else bias, "conv1.bias")
    w2 = numpy_helper.from_array(_he(rng, (8, 8, 3, 3)), "conv2.weight")
    second_input = "missing" if kind == "dangling" else "r1"
    nodes = [
        helper.make_node(
            "Conv",
            ["input", "conv1.weight", "conv1.bias"],
            ["c1"],
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node(
            "Conv", [second_input, "conv2.weight"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["c2"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "invalid",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 8, 32, 32])],
        initializer=[w1, b1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    return _save(model, Path(dir) / (name or f"invalid_{kind}.onnx"))


def unconvertible_op(dir: str | Path, *, seed: int = 0, name: str = "shrink.onnx") -> Path:
    """Conv -> Shrink -> Relu: valid and runnable in onnxruntime, but onnx2torch has no Shrink
    converter, so the model has no torch twin (forward-only use)."""
    w = numpy_helper.from_array(
        np.random.default_rng(seed).normal(size=(4, 3, 3, 3)).astype(np.float32), "w"
    )
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Shrink", ["c"], ["s"], lambd=0.5),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "shrink",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 16, 16])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return _save(model, Path(dir) / name)


def overlapping_pools(
    dir: str | Path, *, padded_tail: bool = False, name: str = "alex.onnx"
) -> Path:
    """Conv -> ReLU -> MaxPool 3x3/2 (overlapping, AlexNet's) -> Conv -> ReLU on 27x27 inputs
    (hand-built, opset 13, no weights' bias); ``padded_tail`` adds a padded MaxPool 3x3/2
    (pads 1) at the end, the output then being ``p2 [N, 5, 7, 7]`` instead of ``r2``."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(5, 4, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
    ]
    out = helper.make_tensor_value_info("r2", TensorProto.FLOAT, ["N", 5, 13, 13])
    if padded_tail:
        nodes.append(
            helper.make_node(
                "MaxPool", ["r2"], ["p2"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
            )
        )
        out = helper.make_tensor_value_info("p2", TensorProto.FLOAT, ["N", 5, 7, 7])
    g = helper.make_graph(
        nodes, "alex", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 27, 27])],
        [out], initializer=[w1, w2],
    )  # fmt: skip
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return _save(model, Path(dir) / name)
