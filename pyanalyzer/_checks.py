"""Parameter checks shared by the public functions (real exceptions, never ``assert``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pyanalyzer.errors import UserInputError


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int, refusing bools, non-integers and values below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise UserInputError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise UserInputError(f"{name} must be >= {minimum}, got {value}")
    return int(value)
