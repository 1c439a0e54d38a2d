"""The network: strict pretrained mapping, export at a static size, checkpoints."""

from __future__ import annotations

import pytest
import torch

from calib import export_extractor
from edge_gfs.backends.tensorrt import available as tensorrt_available
from edge_gfs.core.backbone import Lite0Backbone, map_lite0_keys, pretrained_lite0_path
from edge_gfs.core.model import CaplModel, load_checkpoint, model_checksum, save_checkpoint


def test_pretrained_keys_map_one_to_one_and_load():
    src = torch.load(pretrained_lite0_path(), map_location="cpu", weights_only=True)
    assert len(src) == 296
    mapped = map_lite0_keys(src, [1, 2, 2, 3, 3, 4, 1])
    assert len(mapped) == 296
    bb = Lite0Backbone("efficientnet_lite0", pretrained=True)
    # the first depthwise conv and the last stage's projection carry the ImageNet values
    assert torch.equal(bb.blocks[0][0].conv_dw.weight, src["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(bb.blocks[6][0].conv_pwl.weight, src["_blocks.15._project_conv.weight"])
    assert torch.equal(bb.bn1.running_var, src["_bn0.running_var"])


def test_unknown_pretrained_key_fails_loudly():
    src = torch.load(pretrained_lite0_path(), map_location="cpu", weights_only=True)
    src["_blocks.3._mystery.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="_mystery"):
        map_lite0_keys(src, [1, 2, 2, 3, 3, 4, 1])
    with pytest.raises(KeyError):
        map_lite0_keys({"_blocks.16._bn1.weight": torch.zeros(1)}, [1, 2, 2, 3, 3, 4, 1])


def test_features_are_d_dim_at_one_eighth(tiny_cfg):
    model = CaplModel(tiny_cfg, pretrained=False).eval()
    with torch.no_grad():
        f = model(torch.rand(2, 3, 64, 96) * 255)
    assert f.shape == (2, 32, 8, 12)
    assert model.prototypes.shape == (8, 32)


def test_extractor_exports_at_static_size_and_matches_eager(tiny_cfg):
    model = CaplModel(tiny_cfg, pretrained=False).eval()
    ep = export_extractor(model)
    x = torch.rand(1, 3, *tiny_cfg.input_hw) * 255
    with torch.no_grad():
        eager = model.extractor(x)
        exported = ep.module()(x)
    assert exported.shape == eager.shape
    torch.testing.assert_close(exported, eager, rtol=1e-4, atol=1e-4)
    user_input = ep.graph_signature.user_inputs[0]
    node = next(n for n in ep.graph.nodes if n.name == user_input)
    assert tuple(node.meta["val"].shape) == (1, 3, 64, 96)  # static: what TensorRT builds an engine for


def test_tensorrt_path_reports_why_it_is_unavailable():
    ok, why = tensorrt_available()
    if ok:
        assert why == ""
    else:  # never silent, and it names what is missing
        assert why == "no CUDA device" or "torch_tensorrt is not installed" in why


def test_checkpoint_round_trip_is_exact(tiny_cfg, tmp_path):
    model = CaplModel(tiny_cfg, pretrained=False)
    save_checkpoint(tmp_path / "m.pt", model, {"metrics": {"val": {"base_miou": 1.0}}})
    loaded, payload = load_checkpoint(tmp_path / "m.pt")
    assert model_checksum(loaded) == model_checksum(model)
    assert loaded.cfg == model.cfg
    assert payload["metrics"]["val"]["base_miou"] == 1.0
    assert not (tmp_path / "m.pt.tmp").exists()


def test_loading_a_non_checkpoint_says_what_it_is(tmp_path):
    bad = tmp_path / "x.pt"
    torch.save({"weights": 1}, bad)
    with pytest.raises(ValueError, match="not an edge-gfs checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="bundled name"):
        load_checkpoint(tmp_path / "missing.pt")


def test_upsample_argmax_matches_torch_bilinear_argmax_and_softmax():
    """The per-frame OpenCV path gives torch's labels (interpolate, align_corners=False, then argmax) and
    its winning softmax probability."""
    import numpy as np
    import torch.nn.functional as F

    from edge_gfs.core.segmenter import upsample_argmax

    logits = torch.randn(13, 24, 32, generator=torch.Generator().manual_seed(0)) * 4
    up = F.interpolate(logits[None], size=(360, 480), mode="bilinear", align_corners=False)[0]
    idx, conf = upsample_argmax(logits.numpy(), (360, 480), confidence=True)
    assert idx.dtype == np.uint8 and idx.shape == (360, 480)
    assert (idx == up.argmax(0).numpy()).mean() > 0.9999  # float rounding may flip a near-tie
    ref = (torch.softmax(up, 0).amax(0) * 255).round().numpy()
    assert np.abs(conf.astype(int) - ref).max() <= 1
    assert upsample_argmax(logits.numpy(), (360, 480))[1] is None
