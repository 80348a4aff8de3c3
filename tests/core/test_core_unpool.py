"""unpool against autograd's max-pool backward, hand-computed cases and bad inputs."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest

from pyanalyzer import _backend
from pyanalyzer.errors import BackendUnavailableError

torch = pytest.importorskip("torch")
F = torch.nn.functional

# (name, input H, W, kernel, stride, padding, dilation, ceil_mode)
GEOMETRIES = [
    ("2x2/2", 8, 8, (2, 2), (2, 2), (0, 0), (1, 1), False),
    ("3x3/2 alexnet", 27, 27, (3, 3), (2, 2), (0, 0), (1, 1), False),
    ("3x3/2 pad1", 13, 13, (3, 3), (2, 2), (1, 1), (1, 1), False),
    ("3x3/1 pad1 dil2", 11, 12, (3, 3), (1, 1), (1, 1), (2, 2), False),
    ("3x2/2x1 pad(1,0)", 9, 10, (3, 2), (2, 1), (1, 0), (1, 1), False),
    ("3x3/2 ceil", 10, 10, (3, 3), (2, 2), (0, 0), (1, 1), True),
    ("2x3/1x2 dil(2,1) ceil", 9, 11, (2, 3), (1, 2), (0, 1), (2, 1), True),
]


def torch_reference(x: np.ndarray, grad: np.ndarray | None, geometry: tuple) -> tuple:
    """Pool x with torch; return (pooled, switches, x.grad for grad_output = grad)."""
    _, _, _, kernel, stride, padding, dilation, ceil_mode = geometry
    xt = torch.from_numpy(x).requires_grad_(True)
    pooled, switches = F.max_pool2d(
        xt, kernel, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True
    )
    if grad is None:
        return pooled.detach().numpy(), switches.numpy(), None
    pooled.backward(torch.from_numpy(grad))
    return pooled.detach().numpy(), switches.numpy(), xt.grad.numpy()


def run_unpool(values, switches, x_shape, geometry, device):
    _, _, _, kernel, stride, padding, dilation, _ = geometry
    return _backend.unpool(
        values, switches, x_shape[-2:], kernel, stride, padding, dilation, device=device
    )


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
def test_matches_autograd_with_ties(geometry, device):
    """Integer-valued inputs tie in many windows; torch's own switches decide the winners and
    the integer-valued sums are exact, so the result must equal autograd's exactly."""
    _, h, w, *_ = geometry
    rng = np.random.default_rng(1234)
    x = rng.integers(0, 3, size=(2, 5, h, w)).astype(np.float32)
    _, switches, _ = torch_reference(x, None, geometry)
    grad = rng.integers(-4, 5, size=switches.shape).astype(np.float32)
    _, _, expected = torch_reference(x, grad, geometry)
    got = run_unpool(grad, switches, x.shape, geometry, device)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
def test_matches_autograd_random(geometry, device):
    _, h, w, *_ = geometry
    rng = np.random.default_rng(99)
    x = rng.standard_normal((3, 4, h, w), dtype=np.float32)
    _, switches, _ = torch_reference(x, None, geometry)
    grad = rng.standard_normal(switches.shape, dtype=np.float32)
    _, _, expected = torch_reference(x, grad, geometry)
    got = run_unpool(grad, switches, x.shape, geometry, device)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_overlapping_pools_sum_shared_switches(device):
    """AlexNet-sized 3x3/2 pools with peaks at rows and columns 4a + 2: every window holds one
    peak, and each peak is the maximum of the four windows around it, so four pool outputs
    share each switch and their values must add up, as in autograd."""
    geometry = ("alexnet", 55, 55, (3, 3), (2, 2), (0, 0), (1, 1), False)
    rng = np.random.default_rng(5)
    x = rng.random((2, 3, 55, 55), dtype=np.float32)
    x[:, :, 2::4, 2::4] += 10
    _, switches, _ = torch_reference(x, None, geometry)
    values = np.ones_like(switches, dtype=np.float32)
    _, _, expected = torch_reference(x, values, geometry)
    got = run_unpool(values, switches, x.shape, geometry, device)
    assert got.max() == 4  # four pool outputs shared a switch
    np.testing.assert_array_equal(got, expected)
    assert got.sum() == values.sum()


def test_hand_computed_2x2(device):
    """A 4x4 map pooled 2x2/2, written out by hand (cf. captum's 4x4 deconvolution test)."""
    x = np.array(
        [
            [1, 2, 5, 3],
            [4, 0, 1, 1],
            [0, 7, 2, 9],
            [3, 1, 8, 6],
        ],
        dtype=np.float32,
    )[None, None]
    # window maxima: 4 at (1, 0), 5 at (0, 2), 7 at (2, 1), 9 at (2, 3)
    switches = np.array([[[[4, 2], [9, 11]]]], dtype=np.int64)
    values = np.array([[[[10, 20], [30, 40]]]], dtype=np.float32)
    expected = np.array(
        [
            [0, 0, 20, 0],
            [10, 0, 0, 0],
            [0, 30, 0, 40],
            [0, 0, 0, 0],
        ],
        dtype=np.float32,
    )[None, None]
    got = _backend.unpool(values, switches, (4, 4), 2, device=device)
    np.testing.assert_array_equal(got, expected)
    _, torch_switches = F.max_pool2d(torch.from_numpy(x), 2, return_indices=True)
    np.testing.assert_array_equal(torch_switches.numpy(), switches)


def test_hand_computed_overlap(device):
    """5x5 pooled 3x3/2: the centre pixel lies in all four windows; all four pick it."""
    switches = np.full((1, 1, 2, 2), 2 * 5 + 2, dtype=np.int64)
    values = np.array([[[[1, 2], [3, 4]]]], dtype=np.float32)
    got = _backend.unpool(values, switches, 5, 3, 2, device=device)
    expected = np.zeros((1, 1, 5, 5), dtype=np.float32)
    expected[0, 0, 2, 2] = 10
    np.testing.assert_array_equal(got, expected)


def test_empty_batch(device):
    values = np.zeros((0, 3, 2, 2), dtype=np.float32)
    switches = np.zeros((0, 3, 2, 2), dtype=np.int64)
    got = _backend.unpool(values, switches, 4, 2, device=device)
    assert got.shape == (0, 3, 4, 4) and got.dtype == np.float32


def test_wrapper_casts_and_copies(device):
    """float64 / int32 / non-contiguous inputs are converted by the wrapper, not rejected."""
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    switches = np.array([[[[5, 7], [13, 15]]]], dtype=np.int32)
    values = np.asfortranarray(x[:, :, ::2, ::2])
    got = _backend.unpool(values, switches, (4, 4), (2, 2), device=device)
    assert got.dtype == np.float32
    assert got[0, 0, 1, 1] == 0 and got[0, 0, 1, 3] == 2 and got[0, 0, 3, 1] == 8
    assert got[0, 0, 3, 3] == 10


# --- bad inputs: the binding checks dtype, rank, layout, shapes, geometry and switches --------


def _good():
    values = np.ones((1, 2, 2, 2), dtype=np.float32)
    switches = np.zeros((1, 2, 2, 2), dtype=np.int64)
    switches[..., 0, 1] = 2
    switches[..., 1, 0] = 8
    switches[..., 1, 1] = 10
    return values, switches


CORE_GEOMETRY = ((2, 2), (2, 2), (0, 0), (1, 1))


def test_good_inputs_pass():
    values, switches = _good()
    out = _backend.kernels("cpu").unpool(values, switches, 4, 4, *CORE_GEOMETRY)
    assert out.sum() == 8


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda v, s: (v.astype(np.float64), s), "values must be float32"),
        (lambda v, s: (v, s.astype(np.int32)), "switches must be int64"),
        (lambda v, s: (v[0], s[0]), r"must have shape \[N, C, Ho, Wo\]"),
        (lambda v, s: (v, s[:, :1]), "same shape"),
        (lambda v, s: (np.asfortranarray(v.transpose(0, 1, 3, 2)), s), "C-contiguous"),
    ],
    ids=["values-dtype", "switches-dtype", "rank", "mismatched-shapes", "layout"],
)
def test_binding_rejects_bad_arrays(change, match):
    values, switches = change(*_good())
    with pytest.raises(ValueError, match=match):
        _backend.kernels("cpu").unpool(values, switches, 4, 4, *CORE_GEOMETRY)


@pytest.mark.parametrize("bad", [-1, 16, 1 << 40])
def test_out_of_range_switch(bad):
    values, switches = _good()
    switches[0, 1, 1, 0] = bad
    with pytest.raises(ValueError, match=r"switches\[0, 1, 1, 0\].*out of range"):
        _backend.unpool(values, switches, 4, 2, device="cpu")


def test_switch_outside_its_window():
    values, switches = _good()
    switches[0, 0, 0, 0] = 15  # in range, but in the bottom-right window
    with pytest.raises(ValueError, match="not inside the window"):
        _backend.unpool(values, switches, 4, 2, device="cpu")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kernel": 0}, r"kernel\[0\] must be >= 1"),
        ({"stride": (2, 0)}, r"stride\[1\] must be >= 1"),
        ({"padding": -1}, r"padding\[0\] must be >= 0"),
        ({"dilation": 0}, r"dilation\[0\] must be >= 1"),
        ({"out_size": (-1, 4)}, "out_h must be >= 0"),
        ({"kernel": (2, 2, 2)}, "kernel must be an int or a pair"),
    ],
)
def test_bad_geometry(kwargs, match):
    values, switches = _good()
    args = {"out_size": 4, "kernel": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        _backend.unpool(values, switches, device="cpu", **args)


def test_wrapper_rejects_non_numeric():
    values, switches = _good()
    with pytest.raises(ValueError, match="values must have a float32-compatible dtype"):
        _backend.unpool(values.astype(np.complex64), switches, 4, 2, device="cpu")
    with pytest.raises(ValueError, match="switches must have a int64-compatible dtype"):
        _backend.unpool(values, switches.astype(np.float32), 4, 2, device="cpu")


def test_switch_between_dilated_taps():
    """A 3x3 window with dilation 2 on a 5x5 map taps rows and columns 0, 2, 4 only."""
    values = np.ones((1, 1, 1, 1), dtype=np.float32)
    on_tap = np.full((1, 1, 1, 1), 2 * 5 + 4, dtype=np.int64)
    out = _backend.unpool(values, on_tap, 5, 3, 1, 0, 2, device="cpu")
    assert out[0, 0, 2, 4] == 1 and out.sum() == 1
    between = np.full((1, 1, 1, 1), 1 * 5 + 1, dtype=np.int64)
    with pytest.raises(ValueError, match="not inside the window"):
        _backend.unpool(values, between, 5, 3, 1, 0, 2, device="cpu")


# --- the fused check: every switch is checked in the scatter pass, against a brute force ---------


def _window_ok(s: int, oh: int, ow: int, h: int, w: int, geometry: tuple) -> bool:
    """Whether flat position s lies on a tap of pool output (oh, ow)'s window, in Python ints
    (exact for any geometry, however large)."""
    kernel, stride, padding, dilation = geometry
    if not 0 <= s < h * w:
        return False
    for pos, o, k, st, p, d in zip(
        divmod(s, w), (oh, ow), kernel, stride, padding, dilation, strict=True
    ):
        offset = pos - (o * st - p)
        if offset < 0 or offset % d or offset // d >= k:
            return False
    return True


def reference_unpool(values, switches, h, w, geometry):
    """(flat index of the first bad switch or None, np.add.at scatter): an independent
    reference that sums shared switches in row-major order of the pool outputs, as the
    kernel's contract says."""
    n, c, ho, wo = switches.shape
    for flat, s in enumerate(switches.ravel().tolist()):
        oh, ow = divmod(flat % (ho * wo), wo)
        if not _window_ok(s, oh, ow, h, w, geometry):
            return flat, None
    out = np.zeros((n * c, h * w), dtype=np.float32)
    planes = np.repeat(np.arange(n * c), ho * wo)
    np.add.at(out, (planes, switches.ravel()), values.ravel())
    return None, out.reshape(n, c, h, w)


def _where(flat: int, shape: tuple) -> str:
    return "switches[" + ", ".join(str(i) for i in np.unravel_index(flat, shape)) + "]"


# (name, input H, W, kernel, stride, padding, dilation, ceil_mode)
FUZZ_GEOMETRIES = GEOMETRIES + [
    ("1x3/1x2 one-row windows", 6, 9, (1, 3), (1, 2), (0, 1), (1, 1), False),
    ("4x4/3 pad2 ceil", 10, 11, (4, 4), (3, 3), (2, 2), (1, 1), True),
    ("5x5/1 pad2 (clipped rows)", 6, 7, (5, 5), (1, 1), (2, 2), (1, 1), False),
    ("3x3/2 dil(3,2) pad1", 14, 12, (3, 3), (2, 2), (1, 1), (3, 2), False),
    ("global 7x6", 7, 6, (7, 6), (7, 6), (0, 0), (1, 1), False),
]


@pytest.mark.parametrize("geometry", FUZZ_GEOMETRIES, ids=[g[0] for g in FUZZ_GEOMETRIES])
def test_switch_check_matches_brute_force(geometry, device):
    """Torch's switches, then one of them nudged by a row, a column, a tap, or anywhere: the
    kernel must report exactly the first switch the brute force rejects, and otherwise equal
    the brute-force scatter bit for bit (nudges that stay inside the window are valid)."""
    _, h, w, kernel, stride, padding, dilation, _ = geometry
    geom = (kernel, stride, padding, dilation)
    rng = np.random.default_rng(zlib.crc32(geometry[0].encode()))
    x = rng.integers(0, 3, size=(2, 3, h, w)).astype(np.float32)
    _, base, _ = torch_reference(x, None, geometry)
    values = rng.standard_normal(base.shape, dtype=np.float32)
    nudges = [1, -1, w, -w, dilation[1], -dilation[1], dilation[0] * w, h * w, -(2**62)]
    outcomes = set()
    for trial in range(40):
        switches = base.copy()
        for _ in range(1 + trial % 3):  # one to three nudged switches, anywhere
            flat = int(rng.integers(switches.size))
            nudge = nudges[trial % len(nudges)] if trial < 30 else int(rng.integers(-h * w, h * w))
            switches.flat[flat] += nudge
        bad, expected = reference_unpool(values, switches, h, w, geom)
        if bad is None:
            outcomes.add("valid")
            got = _backend.unpool(values, switches, (h, w), *geom, device=device)
            np.testing.assert_array_equal(got, expected)
        else:
            outcomes.add("invalid")
            pattern = re.escape(f"{_where(bad, switches.shape)} = {switches.flat[bad]}")
            with pytest.raises(ValueError, match=pattern):
                _backend.unpool(values, switches, (h, w), *geom, device=device)
    assert outcomes == {"valid", "invalid"}


def test_first_bad_switch_is_reported_whatever_the_threads():
    """Bad switches in the first and the last plane (different OpenMP threads): the smallest
    flat index is reported, not whichever thread finished first."""
    values = np.ones((4, 8, 2, 2), dtype=np.float32)
    switches = np.tile(np.array([[0, 2], [8, 10]], dtype=np.int64), (4, 8, 1, 1))
    switches[3, 7, 1, 1] = 0  # last plane: outside its window
    switches[0, 1, 0, 1] = 99  # plane 1: out of range
    for _ in range(20):
        with pytest.raises(ValueError, match=r"switches\[0, 1, 0, 1\] = 99 is out of range"):
            _backend.unpool(values, switches, 4, 2, device="cpu")


@pytest.mark.parametrize("s", [np.iinfo(np.int64).min, np.iinfo(np.int64).max, -(2**32), 2**32])
def test_extreme_switch_values(s):
    values, switches = _good()
    switches[0, 0, 1, 1] = s
    with pytest.raises(ValueError, match=rf"switches\[0, 0, 1, 1\] = {s} is out of range"):
        _backend.unpool(values, switches, 4, 2, device="cpu")


@pytest.mark.parametrize(
    ("geometry", "switch"),
    [
        (((1, 1 << 62), (1, 1), (0, 0), (1, 1)), 3),  # one window covers each row
        (((2, 2), (1 << 62, 1 << 62), (0, 0), (1, 1)), 5),  # only the first window fits
        (((3, 3), (1, 1), (1 << 62, 1 << 62), (1, 1)), 5),  # windows far outside: no tap in
        (((3, 3), (1, 1), (0, 0), (1 << 62, 1 << 62)), 0),  # only the first tap fits
        (((3, 3), (1, 1), (0, 0), (1 << 62, 1 << 62)), 1),
    ],
)
def test_huge_geometry_does_not_overflow(geometry, switch):
    """Geometry near 2**62 must neither overflow nor wrap into a false acceptance: the
    brute force (Python ints) decides."""
    values = np.ones((1, 1, 1, 1), dtype=np.float32)
    switches = np.full((1, 1, 1, 1), switch, dtype=np.int64)
    bad, expected = reference_unpool(values, switches, 4, 4, geometry)
    if bad is None:
        got = _backend.unpool(values, switches, 4, *geometry, device="cpu")
        np.testing.assert_array_equal(got, expected)
    else:
        with pytest.raises(ValueError, match="not inside the window"):
            _backend.unpool(values, switches, 4, *geometry, device="cpu")


# --- unpool_tensor: torch tensors, unpooled where they are ---------------------------------------
#
# CPU tensors go through the CPU kernel by way of numpy; CUDA tensors through _core_cuda's
# device-pointer entry (no host copies), whose switches are checked on the device. Both must
# give the CPU kernel's result bit for bit and reject exactly the switches it rejects, with the
# same message. The CUDA cases run where torch and pyanalyzer._core_cuda both see a device.


def _cuda_tensors_usable() -> bool:
    return torch.cuda.is_available() and _backend.info()["cuda_devices"] > 0


@pytest.fixture(params=["cpu", "cuda"])
def tensor_device(request: pytest.FixtureRequest) -> str:
    if request.param == "cuda" and not _cuda_tensors_usable():
        pytest.skip("CUDA unavailable to torch or to pyanalyzer._core_cuda")
    return request.param


needs_cuda = pytest.mark.skipif(
    not _cuda_tensors_usable(), reason="CUDA unavailable to torch or to pyanalyzer._core_cuda"
)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _pool_on(device: str, x: np.ndarray, geometry: tuple):
    """values (random) and switches of torch's max_pool2d of x, computed on ``device``."""
    _, _, _, kernel, stride, padding, dilation, ceil_mode = geometry
    _, switches = F.max_pool2d(
        torch.from_numpy(x).to(device), kernel, stride, padding, dilation, ceil_mode,
        return_indices=True,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(int(zlib.crc32(geometry[0].encode())))
    values = torch.randn(tuple(switches.shape), generator=gen).to(device)
    return values, switches


@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("geometry", FUZZ_GEOMETRIES, ids=[g[0] for g in FUZZ_GEOMETRIES])
def test_unpool_tensor_equals_the_cpu_kernel(geometry, tensor_device, ties):
    """Switches from torch's own max_pool2d on the tensors' device (overlapping 3x3/2 windows
    included): the result stays on that device and is bitwise the CPU kernel's."""
    _, h, w, kernel, stride, padding, dilation, _ = geometry
    rng = np.random.default_rng(7)
    shape = (3, 4, h, w)
    x = (rng.integers(0, 3, size=shape) if ties else rng.standard_normal(shape)).astype(np.float32)
    values, switches = _pool_on(tensor_device, x, geometry)
    got = _backend.unpool_tensor(values, switches, (h, w), kernel, stride, padding, dilation)
    assert got.device == values.device and got.dtype == torch.float32
    expected = _backend.unpool(
        values.cpu().numpy(), switches.cpu().numpy(), (h, w), kernel, stride, padding, dilation,
        device="cpu",
    )  # fmt: skip
    np.testing.assert_array_equal(_bits(got.cpu().numpy()), _bits(expected))


def test_unpool_tensor_on_cpu_tensors_is_unpool_exactly():
    """The CPU path is the numpy path: same array, bit for bit, for every geometry (runs
    everywhere)."""
    for geometry in FUZZ_GEOMETRIES:
        _, h, w, kernel, stride, padding, dilation, _ = geometry
        x = np.random.default_rng(3).standard_normal((2, 3, h, w)).astype(np.float32)
        values, switches = _pool_on("cpu", x, geometry)
        got = _backend.unpool_tensor(values, switches, (h, w), kernel, stride, padding, dilation)
        ref = _backend.unpool(
            values.numpy(), switches.numpy(), (h, w), kernel, stride, padding, dilation,
            device="cpu",
        )  # fmt: skip
        assert isinstance(got, torch.Tensor) and got.device.type == "cpu"
        np.testing.assert_array_equal(_bits(got.numpy()), _bits(ref))


def test_unpool_tensor_casts_and_copies(tensor_device):
    """float64 / int32 / non-contiguous / autograd tensors are converted, not rejected."""
    x = torch.arange(16, dtype=torch.float64).reshape(1, 1, 4, 4)
    values = x[:, :, ::2, ::2].transpose(2, 3).transpose(2, 3).to(tensor_device)  # strided
    values.requires_grad_(True)
    switches = torch.tensor([[[[5, 7], [13, 15]]]], dtype=torch.int32).to(tensor_device)
    got = _backend.unpool_tensor(values, switches, (4, 4), (2, 2))
    assert got.dtype == torch.float32 and not got.requires_grad
    got = got.cpu().numpy()
    assert got[0, 0, 1, 1] == 0 and got[0, 0, 1, 3] == 2 and got[0, 0, 3, 1] == 8
    assert got[0, 0, 3, 3] == 10 and got.sum() == 20
    wide = torch.zeros(1, 1, 2, 4, device=tensor_device)[..., ::2]  # non-contiguous float32
    wide[..., 0, 0] = 3.0
    narrow = torch.tensor([[[[5, 7], [13, 15]]]], device=tensor_device)
    assert _backend.unpool_tensor(wide, narrow, 4, 2).cpu().numpy()[0, 0, 1, 1] == 3.0


def test_unpool_tensor_empty(tensor_device):
    for n, out in ((0, 4), (2, 0)):
        values = torch.zeros((n, 3, 2, 2), device=tensor_device)
        switches = torch.zeros((n, 3, 2, 2), dtype=torch.int64, device=tensor_device)
        if out == 0:
            with pytest.raises(ValueError, match="out of range"):  # no pixel to name
                _backend.unpool_tensor(values, switches, out, 2)
            continue
        got = _backend.unpool_tensor(values, switches, out, 2)
        assert tuple(got.shape) == (0, 3, 4, 4) and got.device == values.device


@pytest.mark.parametrize("geometry", FUZZ_GEOMETRIES, ids=[g[0] for g in FUZZ_GEOMETRIES])
def test_unpool_tensor_switch_check_matches_brute_force(geometry, tensor_device):
    """As test_switch_check_matches_brute_force, through unpool_tensor: on CUDA the switches
    are checked on the device, and the first bad one is named exactly as on the CPU."""
    _, h, w, kernel, stride, padding, dilation, _ = geometry
    geom = (kernel, stride, padding, dilation)
    rng = np.random.default_rng(zlib.crc32(geometry[0].encode()) + 1)
    x = rng.integers(0, 3, size=(2, 3, h, w)).astype(np.float32)
    _, base, _ = torch_reference(x, None, geometry)
    values = rng.standard_normal(base.shape, dtype=np.float32)
    nudges = [1, -1, w, -w, dilation[1], -dilation[1], dilation[0] * w, h * w, -(2**62)]
    outcomes = set()
    for trial in range(24):
        switches = base.copy()
        for _ in range(1 + trial % 3):
            flat = int(rng.integers(switches.size))
            nudge = nudges[trial % len(nudges)] if trial < 18 else int(rng.integers(-h * w, h * w))
            switches.flat[flat] += nudge
        bad, expected = reference_unpool(values, switches, h, w, geom)
        v = torch.from_numpy(values).to(tensor_device)
        s = torch.from_numpy(switches).to(tensor_device)
        if bad is None:
            outcomes.add("valid")
            got = _backend.unpool_tensor(v, s, (h, w), *geom)
            np.testing.assert_array_equal(got.cpu().numpy(), expected)
        else:
            outcomes.add("invalid")
            pattern = re.escape(f"{_where(bad, switches.shape)} = {switches.flat[bad]}")
            with pytest.raises(ValueError, match=pattern) as raised:
                _backend.unpool_tensor(v, s, (h, w), *geom)
            with pytest.raises(ValueError) as on_cpu:
                _backend.unpool(values, switches, (h, w), *geom, device="cpu")
            assert str(raised.value) == str(on_cpu.value)
    assert outcomes == {"valid", "invalid"}


def test_unpool_tensor_first_bad_switch_whatever_the_threads(tensor_device):
    values = torch.ones((4, 8, 2, 2), device=tensor_device)
    switches = np.tile(np.array([[0, 2], [8, 10]], dtype=np.int64), (4, 8, 1, 1))
    switches[3, 7, 1, 1] = 0  # last plane: outside its window
    switches[0, 1, 0, 1] = 99  # plane 1: out of range
    s = torch.from_numpy(switches).to(tensor_device)
    for _ in range(5):
        with pytest.raises(ValueError, match=r"switches\[0, 1, 0, 1\] = 99 is out of range"):
            _backend.unpool_tensor(values, s, 4, 2)


@pytest.mark.parametrize("s", [np.iinfo(np.int64).min, np.iinfo(np.int64).max, -(2**32), 2**32])
def test_unpool_tensor_extreme_switch_values(s, tensor_device):
    values, switches = _good()
    switches[0, 0, 1, 1] = s
    v, sw = torch.from_numpy(values).to(tensor_device), torch.from_numpy(switches).to(tensor_device)
    with pytest.raises(ValueError, match=rf"switches\[0, 0, 1, 1\] = {s} is out of range"):
        _backend.unpool_tensor(v, sw, 4, 2)


@pytest.mark.parametrize(
    ("geometry", "switch"),
    [
        (((1, 1 << 62), (1, 1), (0, 0), (1, 1)), 3),
        (((2, 2), (1 << 62, 1 << 62), (0, 0), (1, 1)), 5),
        (((3, 3), (1, 1), (1 << 62, 1 << 62), (1, 1)), 5),
        (((3, 3), (1, 1), (0, 0), (1 << 62, 1 << 62)), 0),
        (((3, 3), (1, 1), (0, 0), (1 << 62, 1 << 62)), 1),
    ],
)
def test_unpool_tensor_huge_geometry_does_not_overflow(geometry, switch, tensor_device):
    """The switch check (on the device for CUDA tensors) neither overflows nor wraps into a
    false acceptance. The CUDA gather itself walks every tap of a window (2**62 of them for
    the first case) and is only run here on the CPU."""
    values = np.ones((1, 1, 1, 1), dtype=np.float32)
    switches = np.full((1, 1, 1, 1), switch, dtype=np.int64)
    bad, expected = reference_unpool(values, switches, 4, 4, geometry)
    if bad is None and tensor_device == "cuda":
        pytest.skip("a valid switch: the CUDA gather is not made for 2**62-wide windows")
    v, s = torch.from_numpy(values).to(tensor_device), torch.from_numpy(switches).to(tensor_device)
    if bad is None:
        got = _backend.unpool_tensor(v, s, 4, *geometry)
        np.testing.assert_array_equal(got.cpu().numpy(), expected)
    else:
        with pytest.raises(ValueError, match="not inside the window"):
            _backend.unpool_tensor(v, s, 4, *geometry)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda v, s: (v.cpu().numpy(), s), "takes torch tensors"),
        (lambda v, s: (v.to(torch.complex64), s), "values must have a float32-compatible"),
        (lambda v, s: (v, s.to(torch.float32)), "switches must have a int64-compatible"),
        (lambda v, s: (v, s.to(torch.bool)), "switches must have a int64-compatible"),
        (lambda v, s: (v[0], s[0]), r"must have shape \[N, C, Ho, Wo\] \(rank 4\)"),
        (lambda v, s: (v, s[:, :1]), "same shape"),
    ],
    ids=["numpy", "complex", "float-switches", "bool-switches", "rank", "mismatched-shapes"],
)
def test_unpool_tensor_rejects_bad_tensors(change, match, tensor_device):
    values, switches = (torch.from_numpy(a).to(tensor_device) for a in _good())
    v, s = change(values, switches)
    with pytest.raises(ValueError, match=match):
        _backend.unpool_tensor(v, s, 4, 2)


def test_unpool_tensor_bad_geometry_as_unpool(tensor_device):
    values, switches = (torch.from_numpy(a).to(tensor_device) for a in _good())
    for kwargs, match in (
        ({"kernel": 0}, r"kernel\[0\] must be >= 1"),
        ({"stride": (2, 0)}, r"stride\[1\] must be >= 1"),
        ({"padding": -1}, r"padding\[0\] must be >= 0"),
        ({"dilation": 0}, r"dilation\[0\] must be >= 1"),
        ({"out_size": (-1, 4)}, "out_h must be >= 0"),
    ):
        args = {"out_size": 4, "kernel": 2} | kwargs
        with pytest.raises(ValueError, match=match):
            _backend.unpool_tensor(values, switches, **args)


def test_unpool_device_binding_checks_before_any_device_work():
    """The device-pointer entry checks sizes and geometry first, then the device (here: the
    module may be built on a machine without a GPU)."""
    if not _backend.info()["cuda_module_loaded"]:
        pytest.skip("pyanalyzer._core_cuda not built")
    cuda = _backend._core_cuda
    geometry = ((2, 2), (2, 2), (0, 0), (1, 1))
    with pytest.raises(ValueError, match="N must be >= 0"):
        cuda.unpool_device(0, 0, 0, -1, 1, 1, 1, 2, 2, *geometry, 0)
    with pytest.raises(ValueError, match=r"dilation\[1\] must be >= 1"):
        cuda.unpool_device(0, 0, 0, 1, 1, 1, 1, 2, 2, (2, 2), (2, 2), (0, 0), (1, 0), 0)
    with pytest.raises(ValueError, match="too many elements"):
        cuda.unpool_device(0, 0, 0, 1 << 40, 1 << 40, 1, 1, 2, 2, *geometry, 0)
    if _backend.info()["cuda_devices"] == 0:
        with pytest.raises(ValueError, match="CUDA device 0 is not available"):
            cuda.unpool_device(0, 0, 0, 1, 1, 1, 1, 2, 2, *geometry, 0)


def test_unpool_tensor_cuda_without_cuda_is_one_clear_error():
    if _cuda_tensors_usable():
        pytest.skip("CUDA is available here")
    if not torch.cuda.is_available():
        pytest.skip("torch cannot make CUDA tensors here")  # pragma: no cover
    values, switches = (torch.from_numpy(a).cuda() for a in _good())  # pragma: no cover
    with pytest.raises(BackendUnavailableError, match="CUDA is unavailable"):  # pragma: no cover
        _backend.unpool_tensor(values, switches, 4, 2)


@needs_cuda
def test_unpool_tensor_cuda_mixed_devices_and_host_pointers():
    values, switches = (torch.from_numpy(a) for a in _good())
    with pytest.raises(ValueError, match="must be on one device"):
        _backend.unpool_tensor(values.cuda(), switches, 4, 2)
    cuda = _backend._core_cuda
    out = torch.empty((1, 2, 4, 4), device="cuda")
    with pytest.raises(ValueError, match="values is not memory of CUDA device"):
        cuda.unpool_device(
            values.data_ptr(), switches.cuda().data_ptr(), out.data_ptr(), 1, 2, 2, 2, 4, 4,
            (2, 2), (2, 2), (0, 0), (1, 1), out.device.index,
        )  # fmt: skip


@needs_cuda
def test_unpool_tensor_cuda_runs_on_the_current_stream():
    """On a side stream, behind a long kernel that writes the values: the gather is queued on
    torch's current stream, so it reads the finished values."""
    geometry = GEOMETRIES[1]  # 3x3/2, overlapping
    _, h, w, kernel, stride, padding, dilation, _ = geometry
    x = np.random.default_rng(11).standard_normal((8, 16, h, w)).astype(np.float32)
    _, switches = _pool_on("cuda", x, geometry)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        big = torch.randn(4096, 4096, device="cuda")
        for _ in range(4):  # keep the stream busy before the values are written
            big = big @ big / 64.0
        values = torch.full(tuple(switches.shape), 2.0, device="cuda") + 0 * big[0, 0]
        got = _backend.unpool_tensor(values, switches, (h, w), kernel, stride, padding, dilation)
        done = got.cpu()  # ordered on the side stream too
    torch.cuda.synchronize()
    ref = _backend.unpool(
        values.cpu().numpy(), switches.cpu().numpy(), (h, w), kernel, stride, padding, dilation,
        device="cpu",
    )  # fmt: skip
    np.testing.assert_array_equal(done.numpy(), ref)
