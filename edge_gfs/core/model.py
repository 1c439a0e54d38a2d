"""The CAPL network: Lite0 backbone + FPN-lite context head (the feature extractor), base prototypes P_cls and
the G_sup gate.

Only `FeatureExtractor` runs per frame in a compiled form (torch.export / TensorRT); the prototypes and
G_sup stay in PyTorch so teaching never rebuilds an engine.
"""

from __future__ import annotations

import copy
import hashlib
import io
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edge_gfs.core.backbone import TAP_CHANNELS, Lite0Backbone
from edge_gfs.core.config import ModelConfig
from edge_gfs.core.files import atomic_open


def _conv_bn(cin: int, cout: int, k: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class FPNLiteHead(nn.Module):
    """Top-down fusion of stride 8/16/32 features plus a global-pool context term, output at stride 8.

    The global pool plays the role of PSPNet's pyramid pooling at a fraction of the cost; the last block
    mirrors the reference (3x3 conv, BN, ReLU, Dropout2d(0.1), 1x1 conv) so F is the classifier's input.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        c3, c4, c5 = TAP_CHANNELS
        self.lat3 = _conv_bn(c3, dim, relu=False)
        self.lat4 = _conv_bn(c4, dim, relu=False)
        self.lat5 = _conv_bn(c5, dim, relu=False)
        self.gp = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c5, dim, 1, bias=False), nn.ReLU(inplace=True))
        self.fuse = _conv_bn(dim, dim, k=3)
        self.drop = nn.Dropout2d(0.1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        c3, c4, c5 = feats
        p5 = self.lat5(c5) + self.gp(c5)
        p4 = self.lat4(c4) + F.interpolate(p5, size=c4.shape[-2:], mode="bilinear", align_corners=False)
        p3 = self.lat3(c3) + F.interpolate(p4, size=c3.shape[-2:], mode="bilinear", align_corners=False)
        return self.proj(self.drop(self.fuse(p3)))


class FeatureExtractor(nn.Module):
    """RGB uint8-range frame (B,3,H,W float) -> d-dim features at 1/8 resolution.

    Input normalisation of the Lite family, (x/255 - 0.5)/0.5, is inside the module so the exported graph
    (what TensorRT consumes) is the whole per-frame network.
    """

    def __init__(self, cfg: ModelConfig, pretrained: bool = True) -> None:
        super().__init__()
        self.backbone = Lite0Backbone(cfg.backbone, pretrained=pretrained)
        self.head = FPNLiteHead(cfg.dim)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        x = rgb * (1.0 / 127.5) - 1.0
        return self.head(self.backbone(x))


class GSup(nn.Module):
    """G_sup: how much of a base prototype to keep when blending it with support context (Eq. 4)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * dim, dim, bias=False), nn.ReLU(inplace=True), nn.Linear(dim, 1))

    def forward(self, p_cls: torch.Tensor, p_sup: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(torch.cat([p_cls, p_sup], dim=-1)))


class CaplModel(nn.Module):
    """Feature extractor + learnable base prototypes P_cls (N_b x d) + G_sup."""

    def __init__(self, cfg: ModelConfig, pretrained: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.extractor = FeatureExtractor(cfg, pretrained=pretrained)
        self.prototypes = nn.Parameter(torch.randn(len(cfg.base_classes), cfg.dim) * 0.01)
        self.g_sup = GSup(cfg.dim)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.extractor(rgb)


def at_size(model: CaplModel, input_hw: tuple[int, int]) -> CaplModel:
    """The same weights with another input size in the config: a model's speed/accuracy profiles, and what
    Segmenter feeds a compiled artifact of another size.

    A shallow copy: the modules are shared, only `cfg` differs (ModelConfig's multiple-of-32 rule is for
    training; a 360x480 camera profile runs fine, the FPN resizes to whatever the strides give).
    """
    if tuple(input_hw) == tuple(model.cfg.input_hw):
        return model
    cfg = copy.copy(model.cfg)
    cfg.input_hw = tuple(input_hw)
    other = copy.copy(model)
    object.__setattr__(other, "cfg", cfg)
    return other


def save_checkpoint(path: str | Path, model: CaplModel, extra: dict | None = None, half: bool = False) -> None:
    """Atomic write of config + weights (+ anything the caller wants to keep, e.g. optimizer, metrics)."""
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    payload = {"format": "edge-gfs/1", "config": model.cfg.to_dict(), "state_dict": state, **(extra or {})}
    with atomic_open(Path(path)) as f:
        torch.save(payload, f)


def load_checkpoint(path: str | Path) -> tuple[CaplModel, dict]:
    """Rebuild the model from a checkpoint (no pretrained download or file read needed) in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}: pass a bundled name (see `edge-gfs models`) or a .pt path")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != "edge-gfs/1":
        raise ValueError(f"{path} is not an edge-gfs checkpoint (expected format edge-gfs/1)")
    cfg = ModelConfig.from_dict(payload["config"])
    model = CaplModel(cfg, pretrained=False)
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, payload


def model_checksum(model: CaplModel) -> str:
    """sha256 of the weights in a fixed order: what class packs and compiled artifacts are tied to."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        buf = io.BytesIO()
        buf.write(v.detach().cpu().contiguous().numpy().tobytes())
        h.update(buf.getvalue())
    return h.hexdigest()
