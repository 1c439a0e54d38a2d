"""`edge-gfs keys NAME`: a ZeroMQ CURVE key pair, for a node's teach socket reachable from other hosts.

Why CURVE: the teach socket changes what a robot sees. On loopback only local processes reach it; bound to
a network interface it must authenticate and encrypt, so the node takes its own secret key and a folder of
the operators' public keys it accepts, and refuses a non-loopback --teach without them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLE = """examples:
  # on the robot: the node's own pair
  edge-gfs keys node --dir keys/                 # keys/node.key (public) + keys/node.key_secret (stays here)
  # on each operator's machine: their pair; only the public half travels to the robot
  edge-gfs keys alice --dir ~/.config/edge-gfs/keys
  scp ~/.config/edge-gfs/keys/alice.key robot:keys/operators/
  # the node allows every public key in keys/operators (never put a .key_secret there)
  edge-gfs run --teach tcp://0.0.0.0:5557 --curve-secret keys/node.key_secret --curve-allow keys/operators
  edge-gfs classes --teach tcp://robot:5557 --curve-secret ~/.config/edge-gfs/keys/alice.key_secret \\
      --curve-server-key node.key                # node.key copied from the robot
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-gfs keys", description="Create a CURVE key pair for the teach socket.",
                                epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="file name stem: NAME.key (public, share it) and NAME.key_secret (keep it)")
    p.add_argument("--dir", type=Path, default=Path("."), help="where to write them")
    args = p.parse_args(argv)
    import zmq
    from zmq.auth import create_certificates
    if not zmq.has("curve"):
        print("edge-gfs keys: this libzmq has no CURVE support", file=sys.stderr)
        return 2
    args.dir.mkdir(parents=True, exist_ok=True)
    if (args.dir / f"{args.name}.key_secret").exists():
        print(f"edge-gfs keys: {args.dir / (args.name + '.key_secret')} exists; not overwriting it", file=sys.stderr)
        return 2
    public, secret = create_certificates(str(args.dir), args.name)
    Path(secret).chmod(0o600)
    print(f"public key {public}\nsecret key {secret} (keep it on this machine)")
    return 0
