"""`python bench/gfs_camvid.py --quick` end to end: tiny real trainings, real supports, real test frames."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quick_benchmark_runs_and_reports_every_system(camvid_root, tmp_path):
    cmd = [sys.executable, str(REPO / "bench" / "gfs_camvid.py"), "--quick", "--jobs", "1",
           "--out", str(tmp_path / "results"), "--cache", str(tmp_path / "cache")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "results" / "gfs_camvid.json").read_text())
    systems = {row["system"] for row in report["summary"]}
    assert systems == {"oracle", "baseline", "capl", "capl_no_margin", "capl_per_shot", "capl_unknown_any",
                       "capl_finetune", "capl_recipe2", "capl_mean_rows", "capl_lowbb", "capl_margin_0.15",
                       "baseline_calibrated", "sce_only", "dqce_only", "capl_on_baseline", "capl_paper_dqce"}
    warm = report["models"]["capl_unknown-f0"]["recipe"]
    assert warm["init"].startswith("capl-f0-") and warm["unknown_weight"] == 0.1  # warm start from the cached capl
    run = next(x for x in report["runs"] if x["system"] == "capl" and x["mode"] == "mask")
    assert set(run["supports"]) == {"Car", "Pedestrian", "Bicyclist"}
    assert all(len(v) == 1 for v in run["supports"].values())
    assert set(run["per_class"]) >= {"Car", "Sky"} and run["total_miou"] is not None
    assert (tmp_path / "results" / "gfs_camvid_per_class.png").stat().st_size > 1000
    assert "| capl | 1 | mask |" in (tmp_path / "results" / "gfs_camvid.md").read_text()
    # cached by recipe hash: a second run trains nothing
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r2.returncode == 0 and "model(s)" not in r2.stdout
