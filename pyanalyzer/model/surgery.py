"""Graph surgery for unit ablation: a per-channel mask after a layer, fed as a graph input.

The ablated model is the original graph with ``Mul(X, mask)`` inserted after the layer's tensor
``X`` (every consumer of ``X`` reads the product), where ``mask`` is a new graph input of shape
``[B, C, 1, 1]`` (``[B, 1, 1, C]`` for an NHWC map, ``[B, C]`` for a vector). One onnxruntime
session then serves every unit and every set of units: row ``b`` of the batch is the image with
the channels that ``mask[b]`` zeroes ablated (Bau et al., PNAS 2020; Zhou et al. 2018).

Two cuts of that graph:

* ``"tail"``: only the nodes that depend on ``X`` (the part of the network after the layer).
  Its inputs are the tensors crossing the cut, computed once per image by the original graph
  (the head), then repeated once per ablation: the head is not run again for every unit.
  Integer tensors crossing the cut (shapes computed from the batch, for a later ``Reshape``)
  are recomputed in the tail from the repeated float tensors they derive from, so that they
  see the repeated batch;
* ``"whole"``: every node; its inputs are the model's own inputs (the images, repeated).
  The fallback where the tail cannot run batched (the caller checks the tail against the
  original model on real data and falls back).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

from pyanalyzer.errors import UserInputError
from pyanalyzer.model.graph import LayerInfo, tensor_elem_types

__all__ = ["MASK_INPUT", "AblationGraph", "ablation_graph", "head_graph", "mask_shape"]

MASK_INPUT = "pyanalyzer_ablation_mask"
"""The name of the mask's graph input."""
_ABLATED = "pyanalyzer_ablated"
_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


@dataclass(frozen=True)
class AblationGraph:
    """An ablatable model.

    Attributes:
        proto: the rewritten ONNX model.
        cut: ``"tail"`` or ``"whole"`` (see the module).
        inputs: the graph inputs besides the mask, in order: tensors of the original graph
            (for ``"whole"``, the model's inputs).
        outputs: the outputs computed (the requested outputs that depend on the layer).
        mask_dtype: the ONNX element type of the mask (the layer's).
        input_types: the ONNX element type of each of ``inputs`` (for :func:`head_graph`).
    """

    proto: onnx.ModelProto
    cut: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    mask_dtype: int
    input_types: dict[str, int]


def mask_shape(layer: LayerInfo, rows: int) -> tuple[int, ...]:
    """The mask's shape for ``rows`` batch rows: ``[rows, C, 1, 1]``, ``[rows, 1, 1, C]`` or
    ``[rows, C]``."""
    c = int(layer.channels or 0)
    if len(layer.shape) == 2:
        return (rows, c)
    return (rows, 1, 1, c) if layer.layout == "nhwc" else (rows, c, 1, 1)


def _subgraphs(node: onnx.NodeProto) -> Iterable[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _outer_refs(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from its enclosing scopes."""
    local = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    refs: set[str] = set()
    for node in graph.node:
        for name in _node_inputs(node):
            if name and name not in local:
                refs.add(name)
        local.update(o for o in node.output if o)
    return refs


def _node_inputs(node: onnx.NodeProto) -> list[str]:
    """A node's inputs, with the outer-scope names its subgraphs read."""
    names = [i for i in node.input if i]
    for g in _subgraphs(node):
        names.extend(sorted(_outer_refs(g)))
    return names


def _rename_inputs(node: onnx.NodeProto, old: str, new: str) -> None:
    for k, name in enumerate(node.input):
        if name == old:
            node.input[k] = new
    for g in _subgraphs(node):
        if old in {i.name for i in g.input} | {i.name for i in g.initializer}:
            continue  # shadowed inside
        for inner in g.node:
            _rename_inputs(inner, old, new)


def ablation_graph(
    proto: onnx.ModelProto, layer: LayerInfo, outputs: Sequence[str], cut: str = "tail"
) -> AblationGraph:
    """The model with a channel mask after ``layer`` (see the module).

    Args:
        proto: the model (with a batch dimension that may vary: the forward engine's
            batchable graph).
        layer: the layer whose channels are ablated (spatial, or a ``[N, C]`` vector).
        outputs: the graph outputs wanted (those not depending on the layer are dropped).
        cut: ``"tail"`` or ``"whole"``.

    Raises:
        UserInputError: no requested output depends on the layer.
    """
    if cut not in ("tail", "whole"):
        raise ValueError(f"cut must be 'tail' or 'whole', got {cut!r}")
    g = proto.graph
    x = layer.name
    types = tensor_elem_types(proto)
    init = {i.name for i in g.initializer}
    graph_inputs = [i.name for i in g.input if i.name not in init]
    tainted = {x}
    tail_idx: list[int] = []
    producer: dict[str, int] = {}
    for k, node in enumerate(g.node):
        for o in node.output:
            if o:
                producer[o] = k
        if cut == "whole" or any(i in tainted for i in _node_inputs(node)):
            tail_idx.append(k)
            tainted.update(o for o in node.output if o)
    if x not in producer:
        raise UserInputError(f"layer {layer.alias} is not computed by a node of the graph")
    kept = [o for o in outputs if o in tainted]
    if not kept:
        raise UserInputError(
            f"the output(s) {', '.join(outputs)} do not depend on layer {layer.alias}: "
            "ablating it changes nothing"
        )
    in_tail = set(tail_idx)
    if cut == "tail":
        # Non-float tensors crossing the cut (shapes of the batch...) and constants are
        # recomputed in the tail, so that they see the repeated batch.
        changed = True
        while changed:
            changed = False
            produced = {o for k in in_tail for o in g.node[k].output if o}
            for k in sorted(in_tail):
                for name in _node_inputs(g.node[k]):
                    if name in produced or name in init or name not in producer:
                        continue
                    src = producer[name]
                    if src in in_tail or name == x:
                        continue
                    node = g.node[src]
                    if node.op_type == "Constant" or types.get(name) not in _FLOAT_TYPES:
                        in_tail.add(src)
                        changed = True
        tail_idx = sorted(in_tail)
    produced_in_tail = {o for k in tail_idx for o in g.node[k].output if o}
    crossing: list[str] = []
    if cut == "whole":
        crossing = list(graph_inputs)
    else:
        for k in tail_idx:
            for name in _node_inputs(g.node[k]):
                if name in produced_in_tail or name in init or name in crossing:
                    continue
                crossing.append(name)
    dtype = types.get(x, TensorProto.FLOAT) or TensorProto.FLOAT

    nodes: list[onnx.NodeProto] = []
    for k in tail_idx:
        node = onnx.NodeProto()
        node.CopyFrom(g.node[k])
        _rename_inputs(node, x, _ABLATED)
        nodes.append(node)
    mul = helper.make_node("Mul", [x, MASK_INPUT], [_ABLATED], name="pyanalyzer_ablation")
    if cut == "whole":
        at = next(i for i, n in enumerate(nodes) if x in n.output) + 1
        nodes.insert(at, mul)
    else:
        nodes.insert(0, mul)
    used = {name for n in nodes for name in _node_inputs(n)}
    rank = len(layer.shape)
    mask_vi = helper.make_tensor_value_info(
        MASK_INPUT, dtype, ["rows", *([None] * (rank - 1))] if rank else None
    )
    input_vis = []
    originals = {i.name: i for i in g.input}
    for name in crossing:
        if name in originals:
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(originals[name])
            if cut == "tail":
                vi.type.tensor_type.ClearField("shape")
        else:
            vi = helper.make_tensor_value_info(name, types.get(name) or TensorProto.FLOAT, None)
        input_vis.append(vi)
    output_vis = []
    declared = {o.name: o for o in g.output}
    for name in kept:
        vi = onnx.ValueInfoProto()
        if name in declared:
            vi.CopyFrom(declared[name])
            vi.type.tensor_type.ClearField("shape")
        else:
            vi = helper.make_tensor_value_info(name, types.get(name) or TensorProto.FLOAT, None)
        output_vis.append(vi)
    graph = helper.make_graph(
        nodes,
        f"{g.name or 'model'}_ablated_at_{layer.alias}",
        [*input_vis, mask_vi],
        output_vis,
        initializer=[i for i in g.initializer if i.name in used or cut == "whole"],
    )
    model = helper.make_model(graph, opset_imports=list(proto.opset_import))
    model.ir_version = proto.ir_version
    model.functions.extend(proto.functions)
    return AblationGraph(
        proto=model,
        cut=cut,
        inputs=tuple(crossing),
        outputs=tuple(kept),
        mask_dtype=int(dtype),
        input_types={vi.name: int(vi.type.tensor_type.elem_type) for vi in input_vis},
    )


def head_graph(proto: onnx.ModelProto, cut: AblationGraph) -> onnx.ModelProto:
    """The part of ``proto`` that computes the tensors crossing ``cut`` (its ``inputs`` that
    are not graph inputs) from the graph's inputs: the nodes they depend on and nothing after
    them (the head of an ablation's cut, run once per image without the rest of the
    network)."""
    graph_inputs = {i.name for i in proto.graph.input}
    outputs = [n for n in cut.inputs if n not in graph_inputs]
    g = proto.graph
    producer = {o: k for k, node in enumerate(g.node) for o in node.output if o}
    needed: set[int] = set()
    stack = [producer[o] for o in outputs if o in producer]
    while stack:
        k = stack.pop()
        if k in needed:
            continue
        needed.add(k)
        stack.extend(producer[i] for i in _node_inputs(g.node[k]) if i in producer)
    nodes = [g.node[k] for k in sorted(needed)]
    used = {name for n in nodes for name in _node_inputs(n)}
    init = {i.name for i in g.initializer}
    graph = helper.make_graph(
        nodes,
        f"{g.name or 'model'}_head",
        [i for i in g.input if i.name not in init],
        [helper.make_tensor_value_info(o, cut.input_types[o], None) for o in outputs],
        initializer=[i for i in g.initializer if i.name in used],
    )
    model = helper.make_model(graph, opset_imports=list(proto.opset_import))
    model.ir_version = proto.ir_version
    model.functions.extend(proto.functions)
    return model
