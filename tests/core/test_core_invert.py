"""inversion_step (the priors, momentum SGD and the clamp of network inversion in one pass)
against the torch sequence it replaces: the priors' closed-form gradients, torch.optim.SGD's
update and clamp_; thread counts and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from pyanalyzer import _backend

torch = pytest.importorskip("torch")

from pyanalyzer.methods.inversion import objective as obj  # noqa: E402
from pyanalyzer.methods.priors import TV_EPS  # noqa: E402

core = _backend.kernels("cpu")


def case(seed, n=3, c=3, h=9, w=11):
    g = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(n, c, h, w, generator=g) * 0.4,
        grad=torch.randn(n, c, h, w, generator=g) * 1e-2,
        buffer=torch.randn(n, c, h, w, generator=g) * 1e-2,
        lam_tv=torch.rand(n, generator=g),
        lo=torch.full((c,), -0.5),
        hi=torch.full((c,), 0.6),
    )


def torch_step(t, x0, alpha, beta, lam_alpha, lr, fresh, clamp=True):
    """What optim.py does with torch ops: priors, SGD (momentum 0.9) and the clamp."""
    u = t["u"].clone().requires_grad_(True)
    u.grad = t["grad"].clone()
    opt = torch.optim.SGD([u], lr=lr, momentum=obj.MOMENTUM)
    if not fresh:
        opt.state[u] = {"momentum_buffer": t["buffer"].clone()}
    with torch.no_grad():
        xc = u.detach() * x0
        gr = obj.r_alpha(xc, alpha)[1].mul_(lam_alpha)
        gr.addcmul_(obj.r_tv(xc, beta)[1], t["lam_tv"].view(-1, 1, 1, 1))
        u.grad.add_(gr, alpha=x0)
    opt.step()
    if clamp:
        with torch.no_grad():
            u.clamp_(t["lo"].view(1, -1, 1, 1), t["hi"].view(1, -1, 1, 1))
    return u.detach(), opt.state[u]["momentum_buffer"]


def kernel_step(t, x0, alpha, beta, lam_alpha, lr, fresh, clamp=True):
    u, buffer = t["u"].clone(), t["buffer"].clone()
    inf = np.full(u.shape[1], np.inf, np.float32)
    lo, hi = (t["lo"].numpy(), t["hi"].numpy()) if clamp else (-inf, inf)
    core.inversion_step(
        u.numpy(), t["grad"].numpy(), buffer.numpy(), t["lam_tv"].numpy(), lo, hi, x0=x0,
        alpha=alpha, lambda_alpha=lam_alpha, b=obj.B, floor=obj.ALPHA_FLOOR, beta=beta, v=obj.V,
        eps=TV_EPS, lr=lr, momentum=obj.MOMENTUM, fresh=fresh,
    )  # fmt: skip
    return u, buffer


@pytest.mark.parametrize(
    ("alpha", "beta", "fresh", "clamp"),
    [(6.0, 2.0, True, True), (6.0, 2.0, False, True), (6.0, 2.0, False, False),
     (2.5, 1.5, False, True), (3.0, 1.0, True, False)],
)  # fmt: skip
def test_equals_the_torch_sequence(alpha, beta, fresh, clamp):
    t = case(int(alpha * 10 + beta))
    x0 = obj.image_norm(9, 11, 3)
    # a large lambda_alpha, so that the alpha term is not lost in the data gradient
    args = (x0, alpha, beta, 5e-3, 0.01, fresh, clamp)
    want_u, want_buffer = torch_step(t, *args)
    got_u, got_buffer = kernel_step(t, *args)
    scale = float(want_buffer.abs().max())
    torch.testing.assert_close(got_buffer, want_buffer, rtol=0, atol=2e-6 * scale)
    torch.testing.assert_close(got_u, want_u, rtol=1e-6, atol=1e-6)
    if clamp:
        lo, hi = t["lo"].view(1, -1, 1, 1), t["hi"].view(1, -1, 1, 1)
        assert bool((got_u >= lo).all()) and bool((got_u <= hi).all())
        assert bool(((got_u == lo) | (got_u == hi)).any())  # the box is reached
    assert not torch.equal(got_u, t["u"])


def test_results_do_not_depend_on_the_thread_count():
    t = case(1, n=4, h=20, w=17)
    x0 = obj.image_norm(20, 17, 3)
    threads = torch.get_num_threads()
    try:
        results = []
        for k in (1, 2, 3):
            torch.set_num_threads(k)  # the same OpenMP runtime as the kernels
            results.append(kernel_step(t, x0, 6.0, 2.0, 5e-3, 0.01, False))
    finally:
        torch.set_num_threads(threads)
    for u, b in results[1:]:
        assert torch.equal(u, results[0][0]) and torch.equal(b, results[0][1])


def _args():
    t = case(0, n=2, c=3, h=4, w=5)
    return dict(u=t["u"].numpy(), grad=t["grad"].numpy(), buffer=t["buffer"].numpy(),
                lam_tv=t["lam_tv"].numpy(), lo=t["lo"].numpy(), hi=t["hi"].numpy(), x0=1.0,
                alpha=6.0, lambda_alpha=1.0, b=80.0, floor=1e-5, beta=2.0, v=12.0, eps=1e-8,
                lr=0.1, momentum=0.9, fresh=False)  # fmt: skip


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("u", np.zeros((2, 3, 4), np.float32), r"u must have shape \[N, C, H, W\]"),
        ("grad", np.zeros((2, 3, 4, 6), np.float32), "u and grad must have the same shape"),
        ("buffer", np.zeros((2, 3, 4, 5), np.float64), "buffer must be float32"),
        ("lam_tv", np.zeros(3, np.float32), "lam_tv must have N = 2 entries"),
        ("lo", np.zeros(2, np.float32), "lo, hi C = 3"),
        ("lr", float("nan"), "a parameter is not finite"),
        ("v", 0.0, "b and v must be > 0"),
    ],
)
def test_bad_arguments_raise_one_clear_line(name, value, match):
    args = _args()
    args[name] = value
    with pytest.raises(ValueError, match=match):
        core.inversion_step(**args)


def test_a_read_only_image_is_refused():
    args = _args()
    args["u"] = args["u"].copy()
    args["u"].flags.writeable = False
    with pytest.raises(ValueError, match="u and buffer must be writeable"):
        core.inversion_step(**args)
