"""`edge-gfs classes [list | export FILE | import FILE]`: what a running node knows, and class packs.

A class pack carries the taught classes' statistics (no images), tied to the base model by its checksum:
a node running another model refuses it (model_mismatch), because the statistics only mean something in
the feature space they were computed in.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_gfs.commands.common import EXIT_LOCAL, EXIT_OK, add_endpoint_flags, format_classes, run_client
from edge_gfs.commands.flags import parse_with_config
from edge_gfs.core.files import atomic_write
from edge_gfs.wire.client import TeachClient

EXAMPLE = """examples:
  edge-gfs classes                      # list the node's classes
  edge-gfs classes list --json
  edge-gfs classes export robot1.pack   # what robot 1 was taught ...
  edge-gfs classes import robot1.pack --teach tcp://robot2:5557   # ... into robot 2 (same base model)
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-gfs classes", description="List a node's classes; export/import class packs.",
                                epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", nargs="?", default="list", choices=["list", "export", "import"])
    p.add_argument("file", nargs="?", type=Path, help="the class pack (export/import)")
    p.add_argument("--json", action="store_true", help="list as JSON")
    add_endpoint_flags(p)
    args, _ = parse_with_config(p, argv)
    prog = "edge-gfs classes"
    if args.action != "list" and args.file is None:
        print(f"{prog}: {args.action} needs a FILE", file=sys.stderr)
        return EXIT_LOCAL
    pack = None
    if args.action == "import":
        try:
            pack = args.file.read_bytes()
        except OSError as e:
            print(f"{prog}: cannot read {args.file}: {e.strerror}", file=sys.stderr)
            return EXIT_LOCAL

    def body(client: TeachClient) -> int:
        if args.action == "list":
            r = client.list()
            print(json.dumps(r["classes"]) if args.json else format_classes(r["classes"], r["version"]))
        elif args.action == "export":
            data = client.export_pack()
            atomic_write(args.file, data)
            print(f"exported the taught classes to {args.file} ({len(data)} bytes)")
        else:
            r = client.import_pack(pack)
            print(f"imported {args.file}: classes version {r['version']}")
            print(format_classes(r["classes"], r["version"]))
        return EXIT_OK

    return run_client(prog, args, body)
