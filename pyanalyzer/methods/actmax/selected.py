"""Each image's own unit of a convolution, computed alone.

Activation maximization of a layer's units asks image ``i`` to excite unit ``i``: the
objective reads one channel per image. Where that layer is a convolution's output, or the
ReLU of one, every other channel of the layer is computed (forward, and backward through the
convolution) only to be ignored; on the default model's relu5 that is a fifth of the network's
cost per step. :func:`selected_units` finds such a layer, and :class:`SelectedUnits` computes
each image's channel from the convolution's input with that channel's filter alone: a
depthwise convolution of the image's input channels by the filter's slices, summed over
them, plus the bias, then the activation. The values are the convolution's, summed in another order
(to float rounding); the gradient reaching the convolution's input is the one the full layer
would pass back, since the other channels' gradients are zero.

Only :class:`~.objectives.Channel` and :class:`~.objectives.Neuron` objectives on a plain 2-D
``Conv`` (one group, zero padding), with or without a ReLU or ReLU6 after it (the activations
that the render loop redirects in its first steps), take this path; the
render loop keeps the whole layer for everything else (:data:`ENABLED` set to False keeps it
always).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from pyanalyzer.methods.actmax.objectives import Channel, Neuron, Objective, TensorRef
from pyanalyzer.methods.actmax.redirect import redirected_twin
from pyanalyzer.model.layout import packed

if TYPE_CHECKING:
    from pyanalyzer.model.gradient import GradientEngine
    from pyanalyzer.model.preprocessing import PreprocessSpec

__all__ = ["ENABLED", "SelectedUnits", "selected_units"]


class Net(Protocol):
    """What this module reads of the render loop's network (:class:`.render.Net`)."""

    @property
    def engine(self) -> GradientEngine: ...
    @property
    def refs(self) -> Mapping[str, TensorRef]: ...
    @property
    def spec(self) -> PreprocessSpec: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def redirecting(self) -> bool: ...


ENABLED = True
"""Whether :func:`selected_units` may choose the path (False: the whole layer always)."""


class SelectedUnits:
    """The objective's values per image from the model input, each image's unit computed from
    the convolution's input alone (:func:`selected_units` builds it).

    Args:
        net: the render loop's network (its engine, device and redirection state).
        objective: a channel or neuron objective.
        conv: the layer's convolution.
        source: the ONNX tensor the convolution reads (the model input itself or a tensor).
        activation: the ReLU or ReLU6 module after the convolution (the layer is its
            output), or None (the layer is the convolution's output).
        units: one unit per image.
    """

    def __init__(
        self,
        net: Net,
        objective: Channel | Neuron,
        conv: nn.Conv2d,
        source: str,
        activation: nn.Module | None,
        units: list[int],
    ):
        self.net = net
        self.objective = objective
        self.conv = conv
        self.source = source
        self.activation = activation
        self.from_input = source == net.engine.input_name
        self.module = None if self.from_input else net.engine.truncated([source])
        index = torch.tensor(units, device=net.device)
        c = conv.in_channels
        kh, kw = conv.kernel_size
        # every image's filter as c depthwise filters: [N * C, 1, kh, kw]
        self.weight = conv.weight.detach()[index].reshape(len(units) * c, 1, kh, kw)
        bias = conv.bias
        self.bias = None if bias is None else bias.detach()[index].view(-1, 1, 1)
        self.n = len(units)
        twin = None if activation is None else redirected_twin(activation)
        self._redirected = None if twin is None else twin()

    def modules(self) -> list[nn.Module]:
        """The network modules this path runs (whose ReLUs the render loop redirects)."""
        return [] if self.module is None else [self.module]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``[N]``: the objective's value per image for ``x`` in the model's input range and
        layout (what :meth:`~.render.Net.on_input` takes)."""
        if self.module is None:
            src = x
        else:
            (src,) = self.module(x)
        n, c, h, w = src.shape
        if n != self.n:
            raise ValueError(f"the selection holds {self.n} images, got {n}")
        conv = self.conv
        maps = F.conv2d(
            packed(src).view(1, n * c, h, w), self.weight, None, conv.stride, conv.padding,
            conv.dilation, n * c,
        )  # fmt: skip
        own = maps.view(n, c, *maps.shape[-2:]).sum(dim=1)  # [N, h', w']
        if self.bias is not None:
            own = own + self.bias
        own = own.unsqueeze(1)  # [N, 1, h', w']: image i's unit
        if self.activation is not None:
            if self.net.redirecting:  # as redirected_relu swaps the network's own modules
                assert self._redirected is not None
                own = self._redirected(own)
            else:
                own = self.activation(own)
        return self.objective.own_value(own)


def selected_units(net: Net, objective: Objective, n: int) -> SelectedUnits | None:
    """The path for ``objective`` on ``net`` with ``n`` images, or None where it does not apply:
    another objective, a layer that is not a plain convolution's output (or its ReLU's), or the
    path disabled (:data:`ENABLED`)."""
    if not ENABLED or type(objective) not in (Channel, Neuron):
        return None
    assert isinstance(objective, Channel | Neuron)
    engine = net.engine
    ref = net.refs.get(objective.ref)
    if ref is None or ref.layout != "nchw":
        return None
    node_name, k = engine.producer(ref.name)
    node = engine.onnx_nodes[node_name]
    activation = None
    if node.op_type in ("Relu", "Clip"):  # as converted: ReLU, ReLU6 (redirected) or other
        activation = engine.module.get_submodule(node_name)
        if redirected_twin(activation) is None or not engine.has_tensor(node.input[0]):
            return None
        node_name, k = engine.producer(node.input[0])
        node = engine.onnx_nodes[node_name]
    if node.op_type != "Conv" or k != 0:
        return None
    conv = engine.module.get_submodule(node_name)
    if not (
        type(conv) is nn.Conv2d
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    ):
        return None
    source = node.input[0]
    if source != engine.input_name and not engine.has_tensor(source):
        return None
    if source == engine.input_name and net.spec.layout != "nchw":
        return None
    units = [objective.unit] * n if isinstance(objective.unit, int) else list(objective.unit)
    if len(units) != n or ref.channels != conv.out_channels:
        return None
    return SelectedUnits(net, objective, conv, source, activation, units)
