"""Second versions of a model for the comparison tests, made from its ONNX file.

* :func:`permute_channels`: the output channels of one convolution permuted, and the input
  channels of the next convolution permuted alike, so that the network computes the same
  function with the units of one layer relabelled (the matching must find the permutation);
* :func:`fine_tune`: a few SGD steps of every convolution and the classifier on the torch twin
  (``Model.gradient``), written back into the ONNX initializers and checked against
  onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

_PER_CHANNEL = {"Relu", "MaxPool", "AveragePool", "LeakyRelu", "Identity"}


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _set(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    inits = _initializers(model)
    inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))


def permute_channels(src: Path, dst: Path, conv_output: str, perm: np.ndarray) -> Path:
    """Write ``src`` with the output channels of the Conv producing ``conv_output`` permuted
    (B's channel ``j`` is A's channel ``perm[j]``) and the next Conv's input channels permuted
    alike (reached through per-channel ops, or a global pool and Flatten before a Gemm): the
    outputs stay the same."""
    model = onnx.load(str(src))
    nodes = list(model.graph.node)
    conv = next(n for n in nodes if n.op_type == "Conv" and conv_output in n.output)
    inits = _initializers(model)
    w = numpy_helper.to_array(inits[conv.input[1]])
    _set(model, conv.input[1], w[perm])
    if len(conv.input) > 2 and conv.input[2]:
        _set(model, conv.input[2], numpy_helper.to_array(inits[conv.input[2]])[perm])
    tensor, pooled = conv_output, False
    while True:
        (consumer,) = [n for n in nodes if tensor in n.input]
        if consumer.op_type == "Conv":
            w2 = numpy_helper.to_array(inits[consumer.input[1]])
            _set(model, consumer.input[1], w2[:, perm])
            break
        if consumer.op_type == "Gemm":  # after a global pool and Flatten: one input per channel
            w2 = numpy_helper.to_array(inits[consumer.input[1]])
            trans = any(a.name == "transB" and a.i for a in consumer.attribute)
            _set(model, consumer.input[1], w2[:, perm] if trans else w2[perm])
            break
        if consumer.op_type == "GlobalAveragePool":
            pooled = True
        elif consumer.op_type == "Flatten" and pooled:
            pass  # [N, C, 1, 1] after the global pool: the channels stay in order
        elif consumer.op_type not in _PER_CHANNEL:
            raise ValueError(f"{consumer.op_type} after {tensor} is not per-channel")
        tensor = consumer.output[0]
    onnx.save(model, str(dst))
    return dst


def fine_tune(
    src: Path, dst: Path, images: np.ndarray, *, target: int, steps: int = 4, lr: float = 0.05
) -> Path:
    """Write ``src`` after ``steps`` SGD steps that push every image of ``images`` (uint8
    ``[N, H, W, 3]``) towards class ``target`` (a crude backdoor-like fine-tune of every Conv
    and Gemm), trained on the torch twin and written back into the ONNX initializers; the
    written file is checked against the trained twin with onnxruntime."""
    import onnxruntime as ort
    import torch

    import pyanalyzer as pa

    model = pa.load_model(src, check_parity=False)
    eng = model.gradient
    trained = [
        (node, eng.module.get_submodule(name))
        for name, node in eng.onnx_nodes.items()
        if node.op_type in ("Conv", "Gemm")
    ]
    params = []
    for _, module in trained:
        for p in module.parameters():
            p.requires_grad_(True)
            params.append(p)
    x = torch.from_numpy(model.preprocessing.normalize(images).astype(np.float32))
    y = torch.full((len(images),), target, dtype=torch.long)
    opt = torch.optim.SGD(params, lr=lr)
    torch.manual_seed(0)
    for _ in range(steps):
        opt.zero_grad()
        out = eng(x)
        logits = out if isinstance(out, torch.Tensor) else out[0]
        torch.nn.functional.cross_entropy(logits, y).backward()
        opt.step()
    proto = onnx.load(str(src))
    shapes = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    for node, module in trained:
        for k, attr in ((1, "weight"), (2, "bias")):
            if len(node.input) > k and node.input[k]:
                value = getattr(module, attr).detach().numpy().astype(np.float32)
                assert value.shape == shapes[node.input[k]], (node.name, value.shape)
                _set(proto, node.input[k], value)
    onnx.save(proto, str(dst))
    with torch.no_grad():
        out = eng(x)
        want = (out if isinstance(out, torch.Tensor) else out[0]).numpy()
    sess = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    return dst
