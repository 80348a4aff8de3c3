"""warp_normalize (the render loop's resampling fused with the normalisation) against a plain
numpy reference in float64, a hand-computed case, the adjoint identity of its backward pass,
torch's grid_sample, and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from pyanalyzer import _backend

torch = pytest.importorskip("torch")
F = torch.nn.functional

core = _backend.kernels("cpu")


def reference(x, theta, scale, shift, source, fill, out_h, out_w):
    """The contract of csrc/include/pyanalyzer/warp.h, one pixel at a time, in float64."""
    n, c, h, w = x.shape
    out = np.zeros((n, out_h, out_w, c))
    for b in range(n):
        for i in range(out_h):
            for j in range(out_w):
                sx, sy = theta[b] @ np.array([j, i, 1.0])
                x0, y0 = int(np.floor(sx)), int(np.floor(sy))
                fx, fy = sx - x0, sy - y0
                corners = [(y0, x0, (1 - fx) * (1 - fy)), (y0, x0 + 1, fx * (1 - fy)),
                           (y0 + 1, x0, (1 - fx) * fy), (y0 + 1, x0 + 1, fx * fy)]  # fmt: skip
                for k in range(c):
                    v = sum(
                        wt * (x[b, source[k], yy, xx] - fill)
                        for yy, xx, wt in corners
                        if 0 <= yy < h and 0 <= xx < w
                    )
                    out[b, i, j, k] = scale[k] * (v + fill) + shift[k]
    return out


def random_case(rng, n=3, c=3, h=9, w=11, out_h=7, out_w=8):
    x = rng.random((n, c, h, w), dtype=np.float32)
    a = rng.normal(0, 0.3, (n, 2, 2)) + np.eye(2)  # rotations, scales and shears
    t = rng.uniform(-3, 5, (n, 2, 1))  # some outputs sample outside the input
    theta = np.concatenate([a, t], axis=2)
    scale = rng.uniform(0.5, 4, c).astype(np.float32)
    shift = rng.uniform(-2, 2, c).astype(np.float32)
    source = rng.permutation(c).astype(np.int64)
    return x, theta, scale, shift, source


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("fill", [0.0, 0.5])
def test_matches_the_float64_reference(c, fill):
    rng = np.random.default_rng(c * 10 + int(fill * 2))
    x, theta, scale, shift, source = random_case(rng, c=c)
    got = core.warp_normalize(x, theta, scale, shift, source, fill, 7, 8)
    want = reference(x.astype(np.float64), theta, scale, shift, source, fill, 7, 8)
    assert got.shape == (3, 7, 8, c) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-6)
    assert np.any(got != np.asarray(shift)[None, None, None, :])  # not all outside


def test_hand_computed_half_pixel_shift():
    """Output pixel j samples input x = j + 0.5 along a 1x3 row [0, 2, 4]: the mean of two
    neighbours, and past the right edge half of the last pixel blended with the fill 1."""
    x = np.array([[[[0.0, 2.0, 4.0]]]], dtype=np.float32)
    theta = np.array([[[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]]])
    one = np.ones(1, np.float32)
    got = core.warp_normalize(x, theta, one, np.zeros(1, np.float32), np.zeros(1, np.int64),
                              1.0, 1, 3)  # fmt: skip
    np.testing.assert_array_equal(got.ravel(), [1.0, 3.0, 0.5 * 4.0 + 0.5 * 1.0])


def test_backward_is_the_adjoint_and_matches_the_reference():
    """With fill = shift = 0 the map is linear; its backward pass must be the transpose:
    <g, A x> = <A^T g, x> for random x and g, and A^T g equals the reference's transpose,
    built column by column from unit images."""
    rng = np.random.default_rng(7)
    x, theta, scale, _, source = random_case(rng, n=2, h=5, w=6, out_h=4, out_w=5)
    zero = np.zeros(3, np.float32)
    g = rng.standard_normal((2, 4, 5, 3)).astype(np.float32)
    gx = core.warp_normalize_backward(g, theta, scale, source, 5, 6)
    y = core.warp_normalize(x, theta, scale, zero, source, 0.0, 4, 5)
    assert gx.shape == x.shape
    np.testing.assert_allclose(np.vdot(g, y), np.vdot(gx, x), rtol=1e-5)
    want = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):
        unit = np.zeros(x.shape)
        unit[idx] = 1.0
        want[idx] = np.vdot(g, reference(unit, theta, scale, zero, source, 0.0, 4, 5))
    np.testing.assert_allclose(gx, want, rtol=0, atol=1e-5)


def test_matches_grid_sample_and_its_autograd():
    """The same resampling through torch: affine_grid + grid_sample(x - fill) + fill in
    float64, then the normalisation; forward and the gradient for x."""
    rng = np.random.default_rng(3)
    x, theta, scale, shift, source = random_case(rng, n=4, h=16, w=12, out_h=10, out_w=14)
    fill = 0.5
    n, c, h, w = x.shape
    to_norm = lambda hh, ww: np.array(  # noqa: E731
        [[2 / ww, 0, 1 / ww - 1], [0, 2 / hh, 1 / hh - 1], [0, 0, 1]]
    )
    m = np.concatenate([theta, np.tile([[[0, 0, 1.0]]], (n, 1, 1))], axis=1)
    norm_theta = to_norm(h, w) @ m @ np.linalg.inv(to_norm(10, 14))
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    grid = F.affine_grid(torch.from_numpy(norm_theta[:, :2]), [n, c, 10, 14], align_corners=False)
    sampled = F.grid_sample(xt - fill, grid, "bilinear", "zeros", align_corners=False) + fill
    want = (sampled[:, torch.from_numpy(source)] * torch.from_numpy(scale).double().view(1, -1, 1, 1)
            + torch.from_numpy(shift).double().view(1, -1, 1, 1)).permute(0, 2, 3, 1)  # fmt: skip
    got = core.warp_normalize(x, theta, scale, shift, source, fill, 10, 14)
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=0, atol=5e-6)
    g = rng.standard_normal(got.shape)
    (want * torch.from_numpy(g)).sum().backward()
    gx = core.warp_normalize_backward(g.astype(np.float32), theta, scale, source, h, w)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=0, atol=2e-5)


def test_results_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(11)
    x, theta, scale, shift, source = random_case(rng, n=5, h=20, w=20, out_h=20, out_w=20)
    g = rng.standard_normal((5, 20, 20, 3)).astype(np.float32)
    threads = torch.get_num_threads()
    try:
        results = []
        for k in (1, 2, 3):
            torch.set_num_threads(k)  # the same OpenMP runtime as the kernels
            results.append((core.warp_normalize(x, theta, scale, shift, source, 0.5, 20, 20),
                            core.warp_normalize_backward(g, theta, scale, source, 20, 20)))  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    for fwd, bwd in results[1:]:
        np.testing.assert_array_equal(fwd, results[0][0])
        np.testing.assert_array_equal(bwd, results[0][1])


def test_far_outside_coordinates_give_the_fill():
    x = np.ones((1, 1, 4, 4), np.float32)
    theta = np.array([[[1.0, 0.0, 1e300], [0.0, 1.0, -1e300]]])
    one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
    got = core.warp_normalize(x, theta, one, zero, np.zeros(1, np.int64), 0.25, 2, 2)
    np.testing.assert_array_equal(got, np.full((1, 2, 2, 1), 0.25, np.float32))
    g = core.warp_normalize_backward(np.ones((1, 2, 2, 1), np.float32), theta, one,
                                     np.zeros(1, np.int64), 4, 4)  # fmt: skip
    np.testing.assert_array_equal(g, np.zeros_like(x))


def _args():
    x = np.zeros((2, 3, 4, 4), np.float32)
    theta = np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (2, 1, 1))
    return [x, theta, np.ones(3, np.float32), np.zeros(3, np.float32), np.arange(3), 0.0, 4, 4]


@pytest.mark.parametrize(
    ("position", "value", "match"),
    [
        (0, np.zeros((2, 3, 4), np.float32), r"x must have shape \[N, C, H, W\]"),
        (0, np.zeros((2, 3, 4, 4), np.float64), "x must be float32"),
        (1, np.zeros((3, 2, 3)), r"theta must have shape \[N, 2, 3\] with N = 2"),
        (1, np.full((2, 2, 3), np.nan), "theta is not finite"),
        (2, np.ones(2, np.float32), "C = 3 entries"),
        (4, np.array([0, 0, 1]), "source must be a permutation of 0..2"),
        (4, np.array([0, 1, 3]), "source must be a permutation of 0..2"),
        (5, float("inf"), "fill is not finite"),
        (6, 0, "out_h must be >= 1"),
    ],
)
def test_bad_arguments_raise_one_clear_line(position, value, match):
    args = _args()
    args[position] = value
    with pytest.raises(ValueError, match=match):
        core.warp_normalize(*args)


def test_backward_bad_arguments():
    theta = _args()[1]
    with pytest.raises(ValueError, match=r"grad_out must have shape \[N, Ho, Wo, C\]"):
        core.warp_normalize_backward(np.zeros((2, 4, 4), np.float32), theta,
                                     np.ones(3, np.float32), np.arange(3), 4, 4)  # fmt: skip
    with pytest.raises(ValueError, match="in_w must be >= 1"):
        core.warp_normalize_backward(np.zeros((2, 4, 4, 3), np.float32), theta,
                                     np.ones(3, np.float32), np.arange(3), 4, 0)  # fmt: skip
