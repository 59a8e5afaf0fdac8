"""Triton kernels of hf-minitron, installed as ``hf_minitron.kernels``.

Each kernel file holds three parts side by side: a plain PyTorch reference, the Triton kernel, and a dispatcher that
picks Triton on CUDA and a fused/chunked PyTorch path on CPU. Importing this package needs only torch (Triton is
imported lazily, and only where available).
"""
