"""The full-disk scenario of tests/test_full_disk.py, run inside a private mount namespace where
MOUNT is a small tmpfs (so the mount vanishes with this process, whatever happens):

  1. a reference run of 4 rounds on the normal disk (REPORT/base/r);
  2. a run of 2 rounds on the tmpfs (MOUNT/r);
  3. a ballast file fills the tmpfs until less than half a checkpoint is free;
  4. `--resume --rounds 4`: round 2's checkpoint cannot be written (exit 2 expected);
     the run directory is copied to REPORT/after-full;
  5. the ballast is removed; `--resume --rounds 4` again; copied to REPORT/final.

Exit codes, stderr and sizes go to REPORT/report.json; the test asserts on them and the copies.

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
    run("first", "--out-dir", str(mount), "--rounds", "2")
    ckpt = mount / "r" / "checkpoint.pt"
    facts["checkpoint_bytes"] = ckpt.stat().st_size
    st = os.statvfs(mount)
    free = st.f_bavail * st.f_frsize
    keep = facts["checkpoint_bytes"] // 2
    with open(mount / "ballast", "wb") as f:             # real pages: tmpfs counts what is written
        f.write(b"\0" * max(0, free - keep))
    st = os.statvfs(mount)
    facts["free_when_full"] = st.f_bavail * st.f_frsize
    run("full", "--out-dir", str(mount), "--rounds", "4", "--resume")
    shutil.copytree(mount / "r", report / "after-full", symlinks=True)
    (mount / "ballast").unlink()
    run("freed", "--out-dir", str(mount), "--rounds", "4", "--resume")
    shutil.copytree(mount / "r", report / "final", symlinks=True)
    facts["mount"] = str(mount)
    (report / "report.json").write_text(json.dumps(facts, indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
