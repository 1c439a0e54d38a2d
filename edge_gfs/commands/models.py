"""`edge-gfs models`: what bundled models there are, their classes, input size and validation scores."""

from __future__ import annotations

import argparse

from edge_gfs.core import zoo


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="edge-gfs models", description=__doc__,
                            epilog="example:\n  edge-gfs models",
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    for name, text in zoo.BUNDLED.items():
        try:
            model, payload = zoo.load(name)
        except FileNotFoundError as e:
            print(f"{name:<14} MISSING: {e}")
            continue
        cfg = model.cfg
        val = payload.get("metrics", {}).get("val", {}).get("base_miou")
        val_txt = f"val base mIoU {val:.1f}" if val is not None else ""
        print(f"{name:<14} {text}\n{'':<14} input {cfg.input_hw[0]}x{cfg.input_hw[1]}, d={cfg.dim}, {cfg.method}, "
              f"base: {', '.join(cfg.base_names)}; {val_txt}")
    return 0
