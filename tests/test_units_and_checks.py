"""Unit selections and named-shape checks: the helpers every boundary uses."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pyanalyzer._checks import check_shape, is_int
from pyanalyzer.errors import ImageError, UserInputError
from pyanalyzer.units import check_syntax, parse_units, select_units


def test_units_text_and_sequences():
    assert parse_units("1-3,6", 8) == [1, 2, 3, 6] and parse_units("all", 3) == [0, 1, 2]
    assert select_units("3-4,1", 5) == [1, 3, 4]  # text: sorted, de-duplicated
    assert select_units([3, 1], 5) == [3, 1]  # a sequence keeps its order
    assert select_units(np.int64(2), 5) == [2]
    with pytest.raises(UserInputError, match=r"^units repeat: \[1, 1\]$"):
        select_units([1, 1], 5)
    with pytest.raises(UserInputError, match=r"^class 7 is out of range: the model has"):
        select_units([7], 5, noun="class", where="the model has classes 0..4")
    with pytest.raises(UserInputError, match="units must be integers"):
        select_units([1.5], 5)
    assert check_syntax(" ALL ") == " ALL " and check_syntax("0-3,7") == "0-3,7"
    for bad in ("3-", "2-1", "a", ""):
        with pytest.raises(UserInputError, match="expected N, A-B"):
            check_syntax(bad)


def test_huge_ranges_are_refused_before_anything_is_built():
    t0 = time.perf_counter()
    with pytest.raises(UserInputError, match=r"^unit 64 is out of range"):
        select_units("0-99999999999999999999", 64)
    with pytest.raises(UserInputError, match=r"^unit 64 is out of range"):
        parse_units("5,0-99999999999999999999", 64)
    with pytest.raises(UserInputError, match=r"^unit -3 is out of range"):
        select_units("-3", 64)
    check_syntax("0-99999999999999999999")  # the syntax alone expands nothing
    assert time.perf_counter() - t0 < 1.0


def test_check_shape_names_what_is_wrong():
    ok = np.zeros((2, 4, 4, 3), np.uint8)
    assert check_shape("images", ok, "N H W C", H=4, W=4, C=3) is ok
    cases = [
        (np.zeros((2, 4, 5, 3)), "got shape [2, 4, 5, 3]"),
        (np.zeros((0, 4, 4, 3)), "got shape [0, 4, 4, 3]"),
        (np.zeros((4, 4, 3)), "got shape [4, 4, 3]"),
    ]
    for arr, got in cases:
        with pytest.raises(ImageError) as exc:
            check_shape("images", arr, "N H W C", note="(the input)", error=ImageError,
                        H=4, W=4, C=3)  # fmt: skip
        assert str(exc.value) == f"images must be [N, 4, 4, 3] (the input), {got}"
    with pytest.raises(UserInputError, match=r"^pair must be \[K, K\], got shape \[2, 3\]$"):
        check_shape("pair", np.zeros((2, 3)), "K K")  # a name used twice: the same size
    assert is_int(np.int32(3)) and is_int(3) and not is_int(True) and not is_int(3.0)
