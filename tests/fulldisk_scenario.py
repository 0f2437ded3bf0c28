"""The full-disk scenario of tests/test_full_disk.py, run inside a private mount namespace where
MOUNT is a small tmpfs (so the mount vanishes with this process, whatever happens):

  1. a reference run of 4 rounds on the normal disk (REPORT/base/r), whose checkpoint size tells
     how much room the next steps get;
  2. a ballast file fills the tmpfs until it holds the run's small files and 1.5 checkpoints: round
     0's checkpoint fits, round 1's temp file (beside round 0's checkpoint) does not;
  3. the same 4-round run on the tmpfs (MOUNT/r): exit 2 expected, at round 1's checkpoint;
     the run directory is copied to REPORT/after-full;
  4. the ballast is removed; `--resume` again; the run directory is copied to REPORT/final.

Exit codes, stderr, sizes and seconds go to REPORT/report.json; the test asserts on them and on the copies.

    python tests/fulldisk_scenario.py MOUNT REPORT
"""
import contextlib
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

SMALL_FILES = 8 * 4096       # metrics.jsonl, accepted.jsonl, config.toml, partition.txt, latest: a page or two each


def main(mount: Path, report: Path) -> None:
    t0 = time.perf_counter()
    import ray

    from thinwire import cli

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    facts: dict = {"seconds_start": round(time.perf_counter() - t0, 1)}
    common = ["simulate", "--clients", "4", "--per-round", "4", "--workers", "1", "--seed", "4", "--name", "r",
              "--no-progress", "--no-plots"]

    def run(key: str, *args: str) -> None:
        err, t0 = io.StringIO(), time.perf_counter()
        with contextlib.redirect_stderr(err):
            facts[f"rc_{key}"] = cli.main([*common, *args])
        facts[f"err_{key}"] = err.getvalue()
        facts[f"seconds_{key}"] = round(time.perf_counter() - t0, 1)

    run("base", "--out-dir", str(report / "base"), "--rounds", "4")
    facts["checkpoint_bytes"] = (report / "base" / "r" / "checkpoint.pt").stat().st_size
    st = os.statvfs(mount)
    room = SMALL_FILES + 3 * facts["checkpoint_bytes"] // 2
    with open(mount / "ballast", "wb") as f:             # real pages: tmpfs counts what is written
        f.write(b"\0" * (st.f_bavail * st.f_frsize - room))
    st = os.statvfs(mount)
    facts["room"] = st.f_bavail * st.f_frsize
    run("full", "--out-dir", str(mount), "--rounds", "4")
    shutil.copytree(mount / "r", report / "after-full", symlinks=True)
    (mount / "ballast").unlink()
    run("freed", "--out-dir", str(mount), "--rounds", "4", "--resume")
    shutil.copytree(mount / "r", report / "final", symlinks=True)
    facts["mount"] = str(mount)
    (report / "report.json").write_text(json.dumps(facts, indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
