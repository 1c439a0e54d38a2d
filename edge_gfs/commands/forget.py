"""`edge-gfs forget NAME`: make a running node forget a taught class (its id is not given to the next class)."""

from __future__ import annotations

import argparse

from edge_gfs.commands.common import EXIT_OK, add_endpoint_flags, run_client
from edge_gfs.commands.flags import parse_with_config
from edge_gfs.wire.client import TeachClient

EXAMPLE = """examples:
  edge-gfs forget Car
  edge-gfs forget Car --teach tcp://127.0.0.1:5557
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-gfs forget", description="Forget a taught class on a running node.",
                                epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="class name (case-insensitive)")
    add_endpoint_flags(p)
    args, _ = parse_with_config(p, argv)

    def body(client: TeachClient) -> int:
        r = client.forget(args.name)
        print(f"forgot {args.name}: classes version {r['version']}")
        return EXIT_OK

    return run_client("edge-gfs forget", args, body)
