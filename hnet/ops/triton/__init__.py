"""Triton kernels for the ops of `hnet.ops`, one file per op, each with its reference's signature.

Importing this package needs triton; `hnet.ops.dispatch` imports it only when a kernel is used.

Every kernel marks its length arguments (sequence length, number of chunks, rows, the seq_idx batch
stride) `do_not_specialize`: an H-Net's inner stages change length at every step, and Triton would
otherwise compile a new variant each time a length's divisibility by 16 (or its being 1) changes.
"""
