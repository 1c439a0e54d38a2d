"""`edge-gfs run`: start the streaming node (edge_gfs/node/loop.py) from flags and an optional YAML file."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from logging.handlers import RotatingFileHandler
from pathlib import Path

import torch

from edge_gfs.backends.select import CHOICES as BACKENDS
from edge_gfs.commands.flags import parse_with_config
from edge_gfs.core.config import parse_hw
from edge_gfs.node.config import NodeConfig, StartupError
from edge_gfs.node.registry import StateError
from edge_gfs.node.sources import SourceError, add_source_flags, alternatives, chosen, open_source
from edge_gfs.wire import protocol as P

log = logging.getLogger("edge_gfs.node")

EXAMPLE = f"""examples:
  edge-gfs camera --images ../shared/datasets/camvid/test/images --fps 10 --loop &   # a publisher on {P.DEFAULT_FRAMES}
  edge-gfs run --model camvid-fold0 --state state/fold0                   # subscribes to it (the default input)
  edge-gfs run --camera 0                                                 # OpenCV camera, in-process
  edge-gfs run --images ../shared/datasets/camvid/test/images --fps 5 --loop
  edge-gfs run --config node.yaml       # node.yaml: {{model: camvid-fold0, frames: "tcp://127.0.0.1:5555"}}
  edge-gfs run --model camvid-fold0 --log-file logs/node.log --log-max-mb 10   # rotating log on disk
  edge-gfs run --model camvid-fold0 --foxglove            # live view: Foxglove on ws://127.0.0.1:8765
  edge-gfs run --mcap drive.mcap --fps 5                  # replay a recording (edge-gfs record) in-process

Label maps go out on --labels (topics labels, classes, status); teach with `edge-gfs teach`, list with
`edge-gfs classes`, forget with `edge-gfs forget`. Protocol: docs/protocol.md.
"""
FRAMES_HINT = "--frames ENDPOINT (frames from `edge-gfs camera`)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-gfs run", description="Run the streaming node: frames in, label maps out, "
                                "live teaching.", epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("frame source (one of; default --frames " + P.DEFAULT_FRAMES + ")")
    add_source_flags(src)
    src.add_argument("--frames", metavar="ENDPOINT", help="subscribe to a frame publisher (edge-gfs camera)")
    src.add_argument("--fps", type=float, help="replay rate of an in-process source (default: the source's own)")
    src.add_argument("--loop", action="store_true", help="replay --images/--video forever (else the node exits at the end)")
    src.add_argument("--frame-id", default="camera", help="frame_id of frames read in-process")
    p.add_argument("--foxglove", nargs="?", const="127.0.0.1:8765", metavar="HOST:PORT",
                   help="also serve the Foxglove WebSocket live view (default 127.0.0.1:8765; needs "
                        "pip install 'edge-gfs[foxglove]'); channels: docs/foxglove.md")
    p.add_argument("--labels", default=P.DEFAULT_LABELS, metavar="ENDPOINT", help="PUB: labels, classes, status topics")
    p.add_argument("--teach", default=P.DEFAULT_TEACH, metavar="ENDPOINT",
                   help="ROUTER for teach requests (REQ or DEALER clients); loopback by default")
    p.add_argument("--curve-secret", type=Path, metavar="FILE",
                   help="the node's CURVE NAME.key_secret: required to bind --teach beyond loopback")
    p.add_argument("--curve-allow", type=Path, metavar="DIR", help="folder of operators' public *.key files accepted")
    p.add_argument("--model", default="camvid", help="bundled name (camvid, camvid-fold0) or a .pt path")
    p.add_argument("--input-size", metavar="HxW", type=parse_hw,
                   help="run the model at this input size instead of its own (a speed/accuracy profile; compile "
                        "with --size HxW to match); see README 'Profiles'")
    p.add_argument("--state", type=Path, metavar="DIR",
                   help="where the class registry lives (default: $XDG_STATE_HOME/edge-gfs/MODEL)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="feature extractor: auto (a TensorRT engine, else PyTorch on CUDA, else the CPU artifact of "
                        "`edge-gfs compile`, else eager), eager, compiled (an artifact, never eager), cpu, cuda "
                        "(PyTorch on the GPU, no TensorRT) or tensorrt")
    p.add_argument("--engine", type=Path, metavar="FILE", help="run this compiled artifact (from edge-gfs compile --out)")
    p.add_argument("--confidence", action="store_true", help="add the winning class's probability to label maps")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker thread; 0 = all cores")
    p.add_argument("--max-classes", type=int, default=P.LIMITS.max_novel_classes,
                   help="most taught classes the node holds (then teach replies `limit`)")
    p.add_argument("--max-shots", type=int, default=P.LIMITS.max_shots_per_class, help="most shots per class")
    p.add_argument("--max-frame-pixels", type=int, default=P.LIMITS.max_frame_pixels,
                   help=f"largest frame accepted, in pixels (default {P.LIMITS.max_frame_pixels:,} = 1920x1200; a "
                        f"bigger frame is counted in status bad_frames and skipped before it is decoded)")
    p.add_argument("--status-period", type=float, default=1.0, help="seconds between status messages")
    p.add_argument("--classes-period", type=float, default=2.0, help="seconds between repeated classes messages")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-file", type=Path, metavar="FILE",
                   help="also log to FILE, rotated at --log-max-mb into FILE.1 .. FILE.3 (stderr keeps logging)")
    p.add_argument("--log-max-mb", type=float, default=10.0, help="size at which --log-file rotates (default 10)")
    p.add_argument("--config", type=Path, metavar="FILE.yaml", help="YAML map of any of these flags; flags win")
    return p


LOG_FORMAT = "%(asctime)s edge-gfs run: %(message)s"


def log_to_file(path: Path, max_mb: float) -> None:
    """Also log to `path`, rotated: a node that runs for months (or is flooded with bad input) must not fill the disk."""
    if max_mb <= 0:
        raise StartupError(f"--log-max-mb must be > 0, got {max_mb:g}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = RotatingFileHandler(path, maxBytes=int(max_mb * 2**20), backupCount=3)
    except OSError as e:
        raise StartupError(f"cannot log to --log-file {path}: {e.strerror}") from None
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)


def config_from(args: argparse.Namespace, given: set[str]) -> NodeConfig:
    """One frame source (a source flag on the command line replaces one from the config file), then the config."""
    flags = chosen(args) + (["frames"] if args.frames is not None else [])
    on_cli = [f for f in flags if f in given]
    flags = on_cli or flags
    if len(flags) > 1:
        raise SourceError(f"give one frame source, not {' and '.join('--' + f for f in flags)}")
    source = flags[0] if flags and flags[0] != "frames" else None
    return NodeConfig(
        model=args.model, input_hw=args.input_size, state=args.state, source=source,
        source_value=str(getattr(args, source)) if source else None, frames=args.frames or P.DEFAULT_FRAMES,
        fps=args.fps, loop=args.loop, frame_id=args.frame_id, labels=args.labels, teach=args.teach,
        curve_secret=args.curve_secret, curve_allow=args.curve_allow, backend=args.backend, engine=args.engine,
        confidence=args.confidence, threads=args.threads, max_classes=args.max_classes, max_shots=args.max_shots,
        max_frame_pixels=args.max_frame_pixels,
        status_period=args.status_period, classes_period=args.classes_period, foxglove=args.foxglove)


def main(argv: list[str] | None = None) -> int:
    args, given = parse_with_config(build_parser(), argv)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    store = None
    try:
        cfg = config_from(args, given)
        cfg.check()  # flags and keys first: a refused configuration loads no model and creates no folder
        if args.log_file is not None:
            log_to_file(args.log_file, args.log_max_mb)
        from edge_gfs.backends.artifact import ArtifactError  # after the fast checks: these load torch models
        from edge_gfs.backends.select import select as select_backend
        from edge_gfs.core import zoo
        from edge_gfs.core.model import at_size, model_checksum
        from edge_gfs.core.segmenter import Segmenter
        from edge_gfs.node.loop import Node
        from edge_gfs.node.registry import Registry, StateStore
        try:
            source = open_source(cfg.source, cfg.source_value, cfg.loop, FRAMES_HINT) if cfg.source else None
            model, _ = zoo.load(cfg.model)
            if cfg.input_hw:
                model = at_size(model, cfg.input_hw)
            backend = select_backend(model, cfg.model, cfg.backend, cfg.engine)  # ArtifactError says what to run
            seg = Segmenter(model, extractor=backend.extractor)
            if backend.name == "cpu":
                # The artifact's runtime has its own thread pool, sized above. What torch still does on this
                # (stream) thread is preprocessing, DQCE and the classifier: small ops where waking a second
                # OpenMP worker costs more than it saves (classifier 0.9 vs 1.2-1.4 ms a frame), and whose idle
                # workers then spin on the cores the runtime needs next (INT8 node +7% flooded; docs/backends.md).
                # The teach thread keeps its own setting.
                torch.set_num_threads(1)
            store = StateStore(cfg.state_dir)
            store.lock()
            fresh = Registry.fresh(model_checksum(model), cfg.model, model.cfg.class_names, model.cfg.base_classes,
                                   model.cfg.dim)
            registry = store.open(fresh)
            node = Node(cfg, seg, registry, store, source, backend.name)
        except ArtifactError as e:
            raise StartupError(str(e)) from None
    except (SourceError, StartupError, StateError, FileNotFoundError, ValueError) as e:
        msg = str(e)
        if isinstance(e, SourceError) and "other sources" not in msg:
            msg += f"; sources: {alternatives(FRAMES_HINT)}"
        print(f"edge-gfs run: {msg}", file=sys.stderr)
        if store is not None:
            store.unlock()
        return 2
    log.info("model %s (checksum %s), state %s: %d taught classes, version %d", cfg.model,
             registry.model_checksum[:12], cfg.state_dir, registry.novel_count(), registry.version)
    log.info("backend %s: %s", backend.name, backend.note)

    def on_signal(signum, _frame) -> None:
        node.stop.set()
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        return node.run()
    finally:
        store.unlock()


if __name__ == "__main__":
    raise SystemExit(main())
