"""kill -9 during teaching (issue 13): does every acknowledged teach survive a crash, and does the registry
always load again?

    python bench/kill9.py                        # 100 kills (about 10-15 minutes on 2 cores)
    python bench/kill9.py --kills 5 --out /tmp/kill9

Why: the node promises (docs/protocol.md) that the registry is saved atomically before a teach is answered,
so a crash or a power cut loses no acknowledged class. SIGKILL is the crash that gives the node no chance to
clean up. Each round: the node runs with --state DIR while this process streams CamVid frames to it (--hz);
a teach is sent (a new class `k9-NNN` with 1-2 Car shots, or every third round one more shot for a class it
already holds), and the node is SIGKILLed after a random delay between 0 and --factor x the teach's typical
duration, so some kills land before the reply and some after. Then the node is restarted on the same state
and checked: it starts (the registry loads), every acknowledged teach is there with at least its
acknowledged shots, the version is the last acknowledged one or, for a teach killed after its save but
before its reply, one more (and then that teach is fully there), and no temp file of a killed save remains.

Reported: kills, corrupt registries (target 0), acknowledged teaches lost (target 0), version mismatches,
temp files left, the restart time (process start to the first ping answered) median/p95.
"""

from __future__ import annotations

import argparse
import shutil
import time

import numpy as np
from tqdm import tqdm

from node_proc import (FrameStream, NodeProcess, add_node_flags, bench_log, car_shots, command_line,
                       machine, md_table, pct, real_frames, write_report)

from edge_gfs.data.datasets import camvid
from edge_gfs.node.registry import STATE_FILE, StateError, StateStore
from edge_gfs.wire import protocol as P
from edge_gfs.wire.client import FramePublisher, TeachClient, TeachError, TeachTimeout, shot_bytes


class Round:
    """One teach-then-kill round: what was sent, when the kill came, and what the restarted node holds."""

    def __init__(self, index: int, name: str, shots: list[int], new: bool) -> None:
        self.index, self.name, self.shots, self.new = index, name, shots, new
        self.row: dict = {"round": index, "name": name, "new_class": new, "shots_sent": len(shots)}


class Kill9:
    """The rounds, and what is known to be durable: the classes and shots the node acknowledged (or that a
    restart showed had landed), and the registry version they add up to."""

    def __init__(self, args: argparse.Namespace, log) -> None:
        self.args, self.log = args, log
        self.rng = np.random.default_rng(args.seed)
        data = camvid()
        # shots pre-encoded as PNG once: the timed request is only the node's work
        self.pool = [shot_bytes(s) for s in car_shots(data, args.pool, args.seed)]
        self.node = NodeProcess.from_args(args)
        self.state = self.node.state
        shutil.rmtree(self.state, ignore_errors=True)  # every run starts with no taught class
        self.pub = FramePublisher(self.node.frames)
        self.stream = FrameStream(self.pub, real_frames(data), args.hz) if args.hz > 0 else None
        self.expected: dict[str, set[int]] = {}  # class -> pool indices of its shots that are durable
        self.version = 0  # the registry version known to be durable
        self.durations: list[float] = []  # teach reply times seen: the kill delays scale with them
        self.rounds: list[dict] = []
        self.restarts: list[float] = []
        self.corrupt: list[dict] = []

    def temps(self) -> int:
        """Temp files of a registry save (`.registry.msgpack.*` beside the file): a killed save leaves one."""
        return len(list(self.state.glob(f".{STATE_FILE}.*")))

    # -- one round ----------------------------------------------------------------------------------------------
    def plan(self, i: int) -> Round:
        """A new class (1-2 shots), or every third round one shot more for a class the node holds."""
        growable = [n for n, s in self.expected.items() if len(s) < len(self.pool)]
        if (i % 3 == 2 or len(self.expected) >= self.args.max_classes) and growable:
            name = growable[int(self.rng.integers(len(growable)))]
            free = [k for k in range(len(self.pool)) if k not in self.expected[name]]
            return Round(i, name, [free[int(self.rng.integers(len(free)))]], new=False)
        k = int(self.rng.integers(1, 3))
        shots = sorted(self.rng.choice(len(self.pool), size=k, replace=False).tolist())
        return Round(i, f"k9-{i:03d}", shots, new=True)

    def teach_and_kill(self, r: Round) -> dict | None:
        """Send the teach, SIGKILL the node `delay` s after sending; the reply if it came before the kill."""
        typical = float(np.median(self.durations)) if self.durations else 1.0
        delay = float(self.rng.uniform(0.0, self.args.factor * typical))
        req = P.request_message(P.Request("teach", name=r.name, shots=tuple(self.pool[k] for k in r.shots)))
        reply = None
        with TeachClient(self.node.teach) as client:
            t0 = time.perf_counter()
            try:
                reply = client.call(req, timeout_s=delay)
                r.row["reply_s"] = round(time.perf_counter() - t0, 3)
                self.durations.append(r.row["reply_s"])
            except TeachTimeout:
                pass
            except TeachError as e:  # a refusal changed nothing: verify() expects the old version
                r.row["refused"] = e.code
            left = delay - (time.perf_counter() - t0)
            if left > 0:
                time.sleep(left)
            self.node.kill9()
        r.row.update(kill_after_s=round(delay, 3), acked=reply is not None)
        return reply

    def restart(self, r: Round) -> bool:
        """Restart on the same state; False (and the registry moved aside, the node started fresh) if it fails."""
        r.row["temps_after_kill"] = self.temps()
        try:
            StateStore(self.state).load()  # the file itself, read as the node reads it
            r.row["file_loads"] = True
        except StateError as e:
            r.row["file_loads"] = False
            self.log.error("round %d: registry unreadable after the kill: %s", r.index, e)
        try:
            self.restarts.append(round(self.node.start().wait_ready(), 2))
            r.row["restart_s"] = self.restarts[-1]
            return True
        except RuntimeError as e:
            r.row["restart_failed"] = True
            self.log.error("round %d: node did not restart: %s", r.index, e)
        evidence = self.args.out / f"{self.args.name}-corrupt-{r.index:03d}.msgpack"
        if (self.state / STATE_FILE).exists():
            shutil.move(self.state / STATE_FILE, evidence)
        self.corrupt.append({"round": r.index, "evidence": str(evidence), "log_tail": self.node.log_tail(800)})
        self.node.kill9()
        self.node.start().wait_ready()
        self.expected, self.version = {}, 0
        return False

    def verify(self, r: Round, reply: dict | None) -> None:
        """Every durable teach present; version = durable (+1 only if this round's teach landed whole); no temps."""
        with TeachClient(self.node.teach, timeout_s=30) as client:
            listed = client.list()
        have = {c["name"]: c["shots"] for c in listed["classes"]}
        v = listed["version"]
        sent = self.expected.get(r.name, set()) | set(r.shots)
        landed = have.get(r.name, 0) >= len(sent)
        if reply is not None:
            self.expected[r.name], self.version = sent, reply["version"]
            ok_version = v == self.version
        else:  # not there at the old version, or there whole at the next one (saved, then killed before the reply)
            ok_version = (v == self.version and not landed) or (v == self.version + 1 and landed)
            if v == self.version + 1 and landed:
                self.expected[r.name] = sent
        lost = sorted(n for n, s in self.expected.items() if have.get(n, 0) < len(s))
        temps = self.temps()
        r.row.update(version=v, version_ok=ok_version, applied=landed, lost=lost, temps_after_restart=temps)
        if lost or not ok_version or temps:
            self.log.error("round %d: lost %s, version %d (durable %d) ok=%s, temps %d", r.index, lost, v,
                           self.version, ok_version, temps)
        for n in lost:  # count each loss once: what the node holds now is the new truth
            self.expected[n] = set(sorted(self.expected[n])[:have.get(n, 0)])
        self.version = v

    # -- the run --------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        self.log.info("node ready after %.1f s", self.node.start().wait_ready())
        if self.stream is not None:
            self.stream.start()
        with TeachClient(self.node.teach, timeout_s=60) as client:  # the first delay scale: one unkilled teach
            t = time.perf_counter()
            req = P.request_message(P.Request("teach", name="k9-first", shots=(self.pool[0],)))
            self.version = client.call(req)["version"]
            self.durations.append(time.perf_counter() - t)
            self.expected["k9-first"] = {0}
        for i in tqdm(range(self.args.kills), desc="kill9", unit="kill"):
            r = self.plan(i)
            reply = self.teach_and_kill(r)
            if self.restart(r):
                self.verify(r, reply)
            self.log.info("%s", r.row)
            self.rounds.append(r.row)
        code = self.node.stop()
        if self.stream is not None:
            self.stream.finish()
        self.pub.close()
        rows = self.rounds
        return {"kills": len(rows), "acked": sum(x["acked"] for x in rows),
                "killed_before_reply": sum(not x["acked"] for x in rows),
                "unacked_but_applied": sum(not x["acked"] and x.get("applied", False) for x in rows),
                "corrupt_registries": sum(not x.get("file_loads", True) or x.get("restart_failed", False)
                                          for x in rows), "corrupt": self.corrupt,
                "acked_teaches_lost": sum(len(x.get("lost", [])) for x in rows),
                "version_mismatches": sum(not x.get("version_ok", True) for x in rows),
                "temps_left_after_kill": sum(x.get("temps_after_kill", 0) for x in rows),
                "temps_left_after_restart": sum(x.get("temps_after_restart", 0) for x in rows),
                "restart_s": {"median": pct(self.restarts, 50, 2), "p95": pct(self.restarts, 95, 2),
                              "max": max(self.restarts, default=None)},
                "teach_reply_s_median": pct(self.durations, 50, 3), "classes_at_end": len(self.expected),
                "final_version": self.version, "final_exit_code": code}


def markdown(r: dict) -> str:
    s = r["summary"]
    lines = [f"# kill -9 during teaching: {s['kills']} kills", "",
             f"Command: `{r['command']}`", "", f"Node code: {r['code']}.", "",
             f"Model {r['model']}, node --threads {r['threads']}, frames streamed at {r['hz']} Hz, kill delay "
             f"uniform in [0, {r['factor']} x median teach reply time ({s['teach_reply_s_median']} s)]; "
             f"{r['machine']}; bench wall time {r['wall_s']} s.", ""]
    lines += md_table(["metric", "value", "target"], [
        ["kills", s["kills"], ""],
        ["acknowledged before the kill", s["acked"], ""],
        ["killed before the reply (of them applied anyway)",
         f"{s['killed_before_reply']} ({s['unacked_but_applied']})", ""],
        ["corrupt registries (node would not start / file unreadable)", f"**{s['corrupt_registries']}**", 0],
        ["acknowledged teaches lost", f"**{s['acked_teaches_lost']}**", 0],
        ["version mismatches", s["version_mismatches"], 0],
        ["temp files after a kill (cleaned at restart)", s["temps_left_after_kill"], ""],
        ["temp files after a restart", s["temps_left_after_restart"], 0],
        ["restart s median / p95 / max", " / ".join(str(s["restart_s"][k]) for k in ("median", "p95", "max")), ""],
        ["taught classes at the end; registry version", f"{s['classes_at_end']}; {s['final_version']}", ""],
    ])
    bad = [x for x in r["rounds"] if x.get("lost") or not x.get("version_ok", True) or not x.get("file_loads", True)]
    if bad:
        lines += ["", "Rounds with a finding:", ""] + [f"- {x}" for x in bad[:30]]
    if s["corrupt"]:
        lines += ["", "Corrupt registries (file moved aside as evidence):", ""] + [f"- {c}" for c in s["corrupt"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=100)
    p.add_argument("--factor", type=float, default=1.5,
                   help="kill delay is uniform in [0, factor x the median teach reply time]")
    p.add_argument("--hz", type=float, default=5.0, help="frames streamed to the node meanwhile (0 = none)")
    p.add_argument("--pool", type=int, default=12, help="distinct Car train shots to teach from")
    p.add_argument("--max-classes", type=int, default=90, help="then only add shots (the node holds at most 100)")
    add_node_flags(p, "kill9", "draws the shots, the rounds and the kill delays")
    args = p.parse_args()
    log = bench_log(args.out, args.name)
    t0 = time.monotonic()
    bench = Kill9(args, log)
    summary = bench.run()
    result = {"command": command_line(), "code": bench.node.code, "machine": machine(), "model": args.model,
              "threads": args.threads,
              "hz": args.hz, "factor": args.factor, "seed": args.seed, "wall_s": round(time.monotonic() - t0, 1),
              "summary": summary, "rounds": bench.rounds}
    md = write_report(args.out, args.name, result, markdown(result))
    log.info("wrote %s", md)
    print(md.read_text())
    ok = summary["corrupt_registries"] == 0 and summary["acked_teaches_lost"] == 0
    if ok and summary["version_mismatches"] == 0:
        bench.node.remove_state()  # kept otherwise: the registry a finding came from
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
