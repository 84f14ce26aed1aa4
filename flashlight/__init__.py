"""flashlight: plain PyTorch attention variants compiled to fused Triton kernels."""
