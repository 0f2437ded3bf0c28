"""A run whose out-dir fills up (issue 24): a real ENOSPC from a small tmpfs, mounted in a private
mount namespace (`unshare`; as root, or as a user through a user namespace) so it cannot outlive
the test. The run fills it up and ends with a one-line error and exit 2; the previous checkpoint is
intact and no temp file is left; once space is back `--resume` continues from it, to the same numbers as a run
that never met a full disk. The steps run in tests/fulldisk_scenario.py."""
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from thinwire import checkpoint
from thinwire.metrics import read_metrics

pytestmark = pytest.mark.slow
SCENARIO = Path(__file__).with_name("fulldisk_scenario.py")
TMPFS_SIZE = "2m"


def _namespace(probe_dir: Path) -> list[str]:
    """An `unshare` prefix under which mounting a tmpfs works here; skip (saying why) if none does."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux `unshare` to mount a small tmpfs in a private mount namespace")
    tried = []
    for prefix in (["unshare", "--mount", "--propagation", "private"],
                   ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]):
        p = subprocess.run([*prefix, "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe_dir)],
                           capture_output=True, text=True)
        if p.returncode == 0:
            return prefix
        tried.append(f"{' '.join(prefix)}: {p.stderr.strip()}")
    pytest.skip("cannot mount a tmpfs here, neither as root nor in a user namespace (" + "; ".join(tried) + ")")


def _stable(rows):
    return [{k: v for k, v in r.items() if k not in ("wall_time", "round_wall")} for r in rows]


@pytest.mark.timeout(300)
def test_full_disk_is_one_line_keeps_the_checkpoint_and_resume_continues(tmp_path):
    mount, report = tmp_path / "disk", tmp_path / "report"
    mount.mkdir()
    report.mkdir()
    prefix = _namespace(mount)
    script = (f"mount -t tmpfs -o size={TMPFS_SIZE} tmpfs {shlex.quote(str(mount))} && "
              f"exec {shlex.quote(sys.executable)} {shlex.quote(str(SCENARIO))} {shlex.quote(str(mount))} "
              f"{shlex.quote(str(report))}")
    p = subprocess.run([*prefix, "sh", "-c", script], capture_output=True, text=True, timeout=280)
    assert p.returncode == 0, p.stderr[-3000:]
    facts = json.loads((report / "report.json").read_text())
    assert facts["rc_base"] == 0, facts["err_base"][-2000:]
    # room for one checkpoint and the small files, not for a second checkpoint beside it
    assert facts["checkpoint_bytes"] < facts["room"] < 2 * facts["checkpoint_bytes"] + 8 * 4096, facts

    # the disk fills at round 1's checkpoint: exit 2, one line naming it; round 0's is intact
    assert facts["rc_full"] == 2, facts["err_full"][-2000:]
    errors = [ln for ln in facts["err_full"].splitlines() if "error" in ln.lower() or "Traceback" in ln]
    ckpt = Path(facts["mount"]) / "r" / "checkpoint.pt"
    assert errors == [f"thinwire simulate: error: out_dir: no space left on device writing {str(ckpt)!r} "
                      "(while writing the checkpoint; the previous checkpoint is intact); allowed: free space "
                      "(or another --out-dir), then --resume to continue from the last checkpoint"], errors
    after = report / "after-full"
    assert sorted(q.name for q in after.iterdir() if q.name.startswith(".")) == []   # no temp file left
    assert checkpoint.load(after, kind="simulate")["round"] == 0
    assert [r["round"] for r in read_metrics(after)] == [0]                        # no torn or extra row

    # space back: --resume continues from round 1, and the run equals one that never filled a disk
    assert facts["rc_freed"] == 0, facts["err_freed"][-2000:]
    final, base = report / "final", report / "base" / "r"
    assert _stable(read_metrics(final)) == _stable(read_metrics(base))
    assert checkpoint.load(final)["global"].equal(checkpoint.load(base)["global"])
