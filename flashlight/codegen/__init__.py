"""Triton code generation from tiled IR (this package only reads IR), and the kernel launcher."""

from flashlight.codegen.triton import CodegenError, KernelSource, generate

__all__ = ["CodegenError", "KernelSource", "generate"]
