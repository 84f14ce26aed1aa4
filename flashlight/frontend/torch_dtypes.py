"""torch dtypes and the IR's dtype names, both ways, and the dtype eager computes in.

The IR knows its dtypes by name only (``f32``, ``i64``, ``b1``; :mod:`flashlight.ir.dtypes`);
this is where torch's dtypes meet them: when lifting (:func:`ir_dtype`), and when the runtime or
the autotuner makes tensors for a program (``IR_TO_TORCH``).
"""

from __future__ import annotations

import torch

from flashlight.frontend.unsupported import Unsupported

TORCH_TO_IR = {
    torch.float64: "f64", torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16",
    torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
    torch.uint8: "u8", torch.bool: "b1",
}
IR_TO_TORCH = {v: k for k, v in TORCH_TO_IR.items()}


def ir_dtype(dt: torch.dtype) -> str:
    """The IR's name for ``dt``; :class:`Unsupported` for a dtype the IR has no name for."""
    try:
        return TORCH_TO_IR[dt]
    except KeyError:
        raise Unsupported(f"dtype {dt} is not supported by the IR") from None


def opmath(dtype: str) -> str:
    """The type eager PyTorch computes a pointwise op of ``dtype`` in."""
    return "f32" if dtype in ("f16", "bf16") else dtype
