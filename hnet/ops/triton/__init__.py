"""Triton kernels for the ops of `hnet.ops`, one file per op, each with its reference's signature.

Importing this package needs triton; `hnet.ops.dispatch` imports it only when a kernel is used.
"""
