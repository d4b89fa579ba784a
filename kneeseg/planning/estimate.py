"""An explicit, documented estimate of what one training iteration of a planned U-Net costs.

The network is the one kneeseg trains: per encoder stage ``n_conv`` 3D convolutions (the first one
strided), per decoder stage a transposed convolution, a concatenation and ``n_conv_dec``
convolutions, every convolution followed by InstanceNorm and LeakyReLU, 1x1 heads for deep supervision.

- Compute: a convolution costs ``2 * prod(kernel) * c_in * c_out`` FLOPs per output voxel; a training
  step is forward + backward, about 3x the forward pass.
- Activation memory: autograd keeps, per convolution, its output, the normalised output and the
  activation (3 tensors of ``c_out`` channels), plus the upsampled and concatenated tensors in the
  decoder; gradients of the same size appear during backward, hence the factor 2.
- Time: FLOPs / sustained throughput. A CPU's throughput is measured when planning (a real training
  step, kneeseg.training.throughput) or taken from a named profile (planning/machine.py); a GPU is
  taken as ``GPU_TFLOPS`` sustained.
"""

from __future__ import annotations

import numpy as np

from kneeseg.planning.plans import ComputeEstimate, NetworkPlan

GPU_TFLOPS = 40.0
CUDA_CONTEXT_GB = 1.0
BYTES_FP32 = 4
BYTES_AUTOCAST = 3  # half-precision convolutions, fp32 normalisation: between 2 and 4 bytes


def _stage_voxels(patch: list[int], network: NetworkPlan) -> list[float]:
    voxels, shape = [], np.asarray(patch, dtype=float)
    for stride in network.strides:
        shape = shape / np.asarray(stride)
        voxels.append(float(np.prod(shape)))
    return voxels


def count_network(patch: list[int], network: NetworkPlan, in_channels: int, num_classes: int):
    """(forward FLOPs per sample, activation elements per sample, parameter count)."""
    f = network.features_per_stage
    k = [int(np.prod(ks)) for ks in network.kernel_sizes]
    v = _stage_voxels(patch, network)
    flops = acts = params = 0.0

    def conv(kernel, cin, cout, vox, norm=True):
        nonlocal flops, acts, params
        flops += 2.0 * kernel * cin * cout * vox
        params += kernel * cin * cout
        acts += (3 if norm else 1) * cout * vox

    for s in range(network.num_stages):
        conv(k[s], in_channels if s == 0 else f[s - 1], f[s], v[s])
        for _ in range(network.n_conv_per_stage - 1):
            conv(k[s], f[s], f[s], v[s])
    for s in range(network.num_stages - 2, -1, -1):
        conv(int(np.prod(network.strides[s + 1])), f[s + 1], f[s], v[s], norm=False)  # transposed conv
        acts += 2 * f[s] * v[s]  # concatenation with the skip connection
        conv(k[s], 2 * f[s], f[s], v[s])
        for _ in range(network.n_conv_per_stage_decoder - 1):
            conv(k[s], f[s], f[s], v[s])
        conv(1, f[s], num_classes, v[s], norm=False)  # segmentation head
    return flops, acts, params


def estimate_iteration(
    patch: list[int], batch_size: int, network: NetworkPlan, in_channels: int, num_classes: int,
    device: str, cpu_gflops: float = 100.0, autocast: bool = False,
) -> ComputeEstimate:
    flops, acts, params = count_network(patch, network, in_channels, num_classes)
    bytes_per = BYTES_AUTOCAST if autocast else BYTES_FP32
    memory = 2 * batch_size * acts * bytes_per + 16 * params  # weights, grads, momentum, slack
    if device == "cuda":
        memory += CUDA_CONTEXT_GB * 1e9
        seconds = 3 * flops * batch_size / (GPU_TFLOPS * 1e12)
    else:
        seconds = 3 * flops * batch_size / (cpu_gflops * 1e9)
    return ComputeEstimate(
        activation_memory_gb=round(memory / 1e9, 3),
        parameters_millions=round(params / 1e6, 3),
        gflops_per_iteration=round(3 * flops * batch_size / 1e9, 1),
        seconds_per_iteration=round(seconds, 3),
    )
