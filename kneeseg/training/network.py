"""The U-Net assembled from a :class:`~kneeseg.planning.plans.NetworkPlan`.

conv-InstanceNorm-LeakyReLU blocks; the first convolution of each encoder stage is strided (no
pooling layers); transposed convolutions upsample; every decoder stage has a 1x1x1 segmentation head
for deep supervision (outputs from full resolution down).
"""

from __future__ import annotations

import torch
from torch import nn

from kneeseg.planning.plans import NetworkPlan

# Networks narrower than this run faster with channels-last weights on CPUs (oneDNN's kernels for few
# channels; a convolution follows its weights' layout, so the network's is the only one to set). On the
# 2-core reference EPYC, base width 8: training step 18-32 % and forward pass 12-28 % faster, base 12:
# 6-12 %; base 16: up to 30 % slower in bf16 (benchmarks/RESULTS.md, "Channels-last for narrow networks").
CHANNELS_LAST_BELOW_WIDTH = 16


def memory_format(plan: NetworkPlan, device: torch.device | str) -> torch.memory_format:
    """The layout of the weights of ``plan``'s network on ``device`` (training and prediction alike)."""
    if torch.device(device).type == "cpu" and plan.features_per_stage[0] < CHANNELS_LAST_BELOW_WIDTH:
        return torch.channels_last_3d
    return torch.contiguous_format


def place(network: nn.Module, plan: NetworkPlan, device: torch.device | str) -> nn.Module:
    """``network`` (built from ``plan``) moved to ``device``, its weights in :func:`memory_format`'s layout."""
    # Module.to takes memory_format as a keyword its type stubs do not list.
    return network.to(device, memory_format=memory_format(plan, device))  # type: ignore[call-overload]


def _triple(values: list[int]) -> tuple[int, int, int]:
    return int(values[0]), int(values[1]), int(values[2])


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: list[int], stride: list[int], n_conv: int):
        layers = []
        for i in range(n_conv):
            layers += [
                nn.Conv3d(cin if i == 0 else cout, cout, _triple(kernel), _triple(stride) if i == 0 else 1, _triple([k // 2 for k in kernel])),
                nn.InstanceNorm3d(cout, eps=1e-5, affine=True),
                nn.LeakyReLU(0.01, inplace=True),
            ]
        super().__init__(*layers)


class UNet(nn.Module):
    def __init__(self, plan: NetworkPlan, in_channels: int, num_classes: int):
        super().__init__()
        f, k, s = plan.features_per_stage, plan.kernel_sizes, plan.strides
        self.deep_supervision = plan.deep_supervision
        self.encoder = nn.ModuleList(
            ConvBlock(in_channels if i == 0 else f[i - 1], f[i], k[i], s[i], plan.n_conv_per_stage) for i in range(len(f))
        )
        # Decoder stage i (from the bottom up) goes from resolution i+1 to resolution i.
        self.upsample = nn.ModuleList(nn.ConvTranspose3d(f[i + 1], f[i], _triple(s[i + 1]), _triple(s[i + 1])) for i in range(len(f) - 1))
        self.decoder = nn.ModuleList(ConvBlock(2 * f[i], f[i], k[i], [1, 1, 1], plan.n_conv_per_stage_decoder) for i in range(len(f) - 1))
        self.heads = nn.ModuleList(nn.Conv3d(f[i], num_classes, 1) for i in range(len(f) - 1))
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        outputs = []
        for i in range(len(self.decoder) - 1, -1, -1):
            x = self.decoder[i](torch.cat([self.upsample[i](x), skips[i]], dim=1))
            if self.deep_supervision and self.training or i == 0:
                outputs.append(self.heads[i](x))
        outputs.reverse()  # full resolution first
        return outputs if self.deep_supervision and self.training else outputs[0]


def _init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
