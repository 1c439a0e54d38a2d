"""The one `edge-gfs` command. Each subcommand lives in its own module, imported only when used, so
the node never loads the trainer (and the trainer can be left out of a robot's install)."""

from __future__ import annotations

import importlib
import sys

# name -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "segment": ("edge_gfs.commands.segment", "segment frames and write colour overlays"),
    "evaluate": ("edge_gfs.commands.evaluate", "mIoU on a CamVid split, optionally after teaching K shots"),
    "models": ("edge_gfs.commands.models", "list the bundled models"),
    "run": ("edge_gfs.commands.run", "the streaming node: frames in, label maps out, live teaching"),
    "camera": ("edge_gfs.commands.camera", "publish frames from a camera, video or image folder"),
    "teach": ("edge_gfs.commands.teach", "teach a running node a class from a few image + mask shots"),
    "forget": ("edge_gfs.commands.forget", "make a running node forget a taught class"),
    "classes": ("edge_gfs.commands.classes", "list a node's classes; export/import class packs"),
    "record": ("edge_gfs.commands.record", "record a running node's frames, label maps and events to MCAP"),
    "view": ("edge_gfs.commands.view", "overlay viewer of the label maps (window, or --out video/PNGs)"),
    "operator": ("edge_gfs.commands.operator", "teaching window: freeze, box (GrabCut) or brush, name, send; list, forget"),
    "launch": ("edge_gfs.commands.launch", "start a pipeline (publisher, node, ...) from a YAML file; restart what dies"),
    "keys": ("edge_gfs.commands.keys", "create a CURVE key pair for a teach socket reachable from other hosts"),
    "compile": ("calib.compile_cmd", "compile the feature extractor for the target (CPU / TensorRT), check parity"),
    "train": ("trainer.train", "train a CAPL, baseline or oracle model (desktop; needs the trainer)"),
}

USAGE = "usage: edge-gfs COMMAND [--help] ...\n\ncommands:\n" + "\n".join(
    f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()
) + "\n\nexample:\n  edge-gfs segment --model camvid --count 4 --out out/segment\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"edge-gfs: unknown command {name!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            print(f"edge-gfs {name}: {module_name} is not installed; install edge-gfs from its repository "
                  f"(pip install -e .)", file=sys.stderr)
            return 2
        raise
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
