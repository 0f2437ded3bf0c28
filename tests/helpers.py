"""Helpers shared by the system tests (importable because pytest puts tests/ on sys.path)."""
from __future__ import annotations

import re
import subprocess


def launch_fleet_nodes(text: str) -> set[str]:
    """Node-id prefixes of the client-fleet actors in `thinwire launch`'s printed actor table
    (rows: "<index> | <node id prefix> | <ip> | a..b | ...", any column separator)."""
    nodes = set()
    for line in text.splitlines():
        cells = [c for c in re.split(r"\s*\|\s*|\s{2,}", line.strip()) if c]
        if len(cells) >= 4 and cells[0].isdigit() and re.fullmatch(r"[0-9a-f]{8,}", cells[1]) \
                and re.fullmatch(r"\d+\.\.\d+", cells[3]):
            nodes.add(cells[1])
    return nodes


def wait_all(procs, timeout: float) -> list[int | None]:
    """Exit codes of `procs`, each waited for up to `timeout` s; one still running is killed (None)."""
    codes: list[int | None] = []
    for p in procs:
        try:
            codes.append(p.wait(timeout))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(None)
    return codes


def in_process_run(out_dir, **settings):
    """The same configuration through the simulation engine with its worker class run in this
    process (no Ray, no sockets): the baseline a served or launched run must reproduce."""
    from thinwire.config import RunConfig, to_dict
    from thinwire.sim.engine import simulate
    from thinwire.sim.worker import SimWorker

    class InProcessPool:
        def __init__(self, cfg):
            self.worker = SimWorker(to_dict(cfg))

        def load(self, data):
            self.worker.load(data)

        def run(self, global_vec, jobs):
            return self.worker.run(global_vec, jobs)

        def close(self):
            pass

    cfg = RunConfig(name="inproc", out_dir=str(out_dir), progress=False, **settings)
    return simulate(cfg, pool=InProcessPool(cfg))


def nearest_centroid_accuracy(c) -> float:
    """Test accuracy of the nearest class-mean classifier on all clients' training data: a baseline
    any trained model of this run must beat."""
    import torch

    from thinwire.data.datasets import dataset_from_config

    ds = dataset_from_config(c)
    xs, ys = zip(*(ds.client_data(k) for k in range(c.clients)))
    x, y = torch.cat(xs).flatten(1), torch.cat(ys)
    x_test, y_test = ds.test_data()
    centroids = torch.stack([x[y == j].mean(0) for j in range(ds.num_classes)])
    return float((torch.cdist(x_test.flatten(1), centroids).argmin(1) == y_test).float().mean())
