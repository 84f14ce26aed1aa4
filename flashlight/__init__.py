"""flashlight: plain PyTorch attention variants compiled to fused Triton kernels.

    f = flashlight.compile(fn)          # or @flashlight.compile
    y = f(q, k, v)                      # == fn(q, k, v)
    print(flashlight.explain(fn, q, k, v))
    prog = flashlight.trace(fn, q, k, v)
"""

from flashlight import ir, passes
from flashlight.api import CompiledFunction, compile, explain, trace
from flashlight.backend import register_backend
from flashlight.counting import counters
from flashlight.options import Options
from flashlight.report import Explanation

__all__ = ["CompiledFunction", "Explanation", "Options", "compile", "counters", "explain", "ir", "passes", "trace"]
__version__ = "0.1.0"

register_backend()
