"""Element types of the IR.

Types are short strings (``f32``, ``bf16``, ``i64``, ``b1``) so that printed programs stay
compact and parseable. This module knows nothing of torch or numpy; the frontend and the
backends translate.
"""

from __future__ import annotations

FLOATS = ("f64", "f32", "f16", "bf16")
SIGNED = ("i64", "i32", "i16", "i8")
UNSIGNED = ("u8",)
BOOL = "b1"
ALL = FLOATS + SIGNED + UNSIGNED + (BOOL,)

# Finite extremes for integer types: the identities of max= and min= there.
INT_RANGE = {
    "i64": (-(2**63), 2**63 - 1),
    "i32": (-(2**31), 2**31 - 1),
    "i16": (-(2**15), 2**15 - 1),
    "i8": (-(2**7), 2**7 - 1),
    "u8": (0, 255),
    "b1": (0, 1),
}

BYTES = {"f64": 8, "i64": 8, "f32": 4, "i32": 4, "f16": 2, "bf16": 2, "i16": 2, "i8": 1, "u8": 1, "b1": 1}

def is_float(dtype: str) -> bool:
    return dtype in FLOATS


def is_int(dtype: str) -> bool:
    return dtype in SIGNED or dtype in UNSIGNED


def check_dtype(dtype: str) -> str:
    if dtype not in ALL:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(ALL)}")
    return dtype
