# cython: language_level=3
"""A module outside mnistnet that cimports its kernels (tests/test_embedding.py builds it).

    from mnistnet._kernels cimport dense_forward, relu_forward

Cython reads mnistnet/_kernels.pxd from the installed package; at import time the functions
come from the mnistnet._kernels extension module itself (no linking against it).
"""
from mnistnet._kernels cimport dense_forward, relu_forward


def dense_relu(float[:, ::1] out, const float[:, ::1] inp, const float[:, ::1] weight,
               const float[::1] bias):
    """out = relu(inp @ weight + bias); out (B, OC), inp (B, C), weight (C, OC), bias (OC)."""
    cdef Py_ssize_t B = inp.shape[0], C = inp.shape[1], OC = weight.shape[1]
    if (weight.shape[0] != C or bias.shape[0] != OC or out.shape[0] != B
            or out.shape[1] != OC):
        raise ValueError(f"shapes don't fit: out ({out.shape[0]}, {out.shape[1]}), inp ({B}, {C}), "
                         f"weight ({weight.shape[0]}, {OC}), bias ({bias.shape[0]},)")
    if B == 0 or C == 0 or OC == 0:
        raise ValueError("empty arrays")
    with nogil:
        dense_forward(&out[0, 0], &inp[0, 0], &weight[0, 0], &bias[0], B, C, OC)
        relu_forward(&out[0, 0], &out[0, 0], B * OC)
    return out
