"""Copies and slices whose gradients keep a channels-last map's layout (pyanalyzer.model.layout),
against autograd through torch's own ``contiguous()`` and slicing."""

from __future__ import annotations

import pytest
import torch

from pyanalyzer.model.layout import channels_last, grad_in_layout, packed, take_rows


def _map(shape=(6, 5, 4, 3), fmt=torch.channels_last, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).contiguous(memory_format=fmt).requires_grad_(True)


def _grad(fn, x, seed=1):
    out = fn(x)
    # a gradient arriving in the output's own layout, as the loops' losses pass it
    noise = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    weight = torch.empty_like(out).copy_(noise)
    (g,) = torch.autograd.grad((out * weight).sum(), x)
    return out.detach(), g


def test_channels_last():
    assert channels_last(_map())
    assert not channels_last(_map(fmt=torch.contiguous_format))
    assert not channels_last(_map((2, 1, 4, 3)))  # one channel: both layouts at once
    assert not channels_last(torch.zeros(2, 3))


@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
def test_packed_equals_contiguous_and_keeps_the_layout(fmt):
    x = _map(fmt=fmt)
    got, got_g = _grad(packed, x)
    want, want_g = _grad(lambda t: t.contiguous(), x)
    assert got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got_g, want_g, rtol=0, atol=0)
    assert got_g.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("start, step", [(0, 1), (0, 2), (1, 2), (2, 3), (5, 4)])
@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
def test_take_rows_equals_the_slice_and_keeps_the_layout(start, step, fmt):
    x = _map(fmt=fmt)
    got, got_g = _grad(lambda t: take_rows(t, start, step), x)
    want, want_g = _grad(lambda t: t[start::step], x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got_g, want_g, rtol=0, atol=0)
    assert got_g.is_contiguous(memory_format=fmt)
    rest = torch.ones(len(x), dtype=torch.bool)
    rest[start::step] = False
    assert float(got_g[rest].abs().sum()) == 0.0


@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize(
    "reduce",
    [
        lambda t: t.mean(dim=(2, 3)).sum(),  # a mean over positions: a contiguous gradient
        lambda t: t[:, 1].sum(),  # one channel picked: a contiguous gradient
        lambda t: t.sum(),  # an expanded gradient, passed on as it is
    ],
    ids=["mean", "channel", "sum"],
)
def test_grad_in_layout_is_the_identity_with_the_maps_layout(fmt, reduce):
    x = _map(fmt=fmt)
    out = grad_in_layout(x)
    torch.testing.assert_close(out, x, rtol=0, atol=0)
    (got,) = torch.autograd.grad(reduce(out), x)
    (want,) = torch.autograd.grad(reduce(x), x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    if fmt == torch.channels_last:
        assert got.is_contiguous(memory_format=fmt) or 0 in got.stride()
