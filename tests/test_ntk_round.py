"""NTK-FL server round state, the shuffler and the ntk config fields (direct calls, no engine)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from thinwire.ntk.jacobian import client_jacobian
from thinwire.config import RunConfig, build
from thinwire.errors import ConfigError, UserError
from thinwire.models import MLP
from thinwire.ntk.projection import projection_seed
from thinwire.ntk import kernel as ntk
from thinwire.ntk.round import NTKRound, NTKSettings, network_loss, validation_split
from thinwire.ntk.shuffler import Shuffler
from thinwire.training import get_flat, model_spec, set_flat


def _setup(settings, n=36, seed=0):
    torch.manual_seed(seed)
    model = MLP((6,), 3, (16,))
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()            # learnable labels
    vec = get_flat(model)
    rnd = NTKRound(settings, model, model_spec(model), x[:12], y[:12], num_classes=3)
    clients = [(x[a:b], y[a:b]) for a, b in ((12, 20), (20, 29), (29, 36))]
    return rnd, model, vec, clients


def _uploads(model, vec, clients, settings, rnd_idx=0):
    p = settings.task_params(rnd_idx)
    return [client_jacobian(model, vec, cx, cy, subsample=p["subsample"], project_dim=p["project"],
                            projection_seed=p["projection_seed"], sample_seed=i) for i, (cx, cy) in enumerate(clients)]


def test_shuffler_permutes_rows_jointly_and_empties():
    sh = Shuffler(3)
    sh.add({"a": torch.arange(4.0), "b": torch.arange(4.0) * 10})
    sh.add({"a": torch.arange(4.0, 7.0), "b": torch.arange(4.0, 7.0) * 10})
    out = sh.release(tag=5)
    assert sorted(out["a"].tolist()) == list(range(7))
    assert torch.equal(out["b"], out["a"] * 10)                   # one permutation for all tensors
    assert not torch.equal(out["a"], torch.arange(7.0))           # 7! orders: identity has prob 1/5040
    assert sh.release() == {} and sh.rows == 0
    plain = Shuffler(3, permute=False)
    plain.add({"a": torch.arange(3.0)})
    assert torch.equal(plain.release()["a"], torch.arange(3.0))
    with pytest.raises(ValueError):
        plain.add({"a": torch.zeros(2), "b": torch.zeros(3)})


def test_round_picks_lowest_validation_loss_and_shuffling_does_not_change_the_update():
    results = {}
    for shuffle in (False, True):
        s = NTKSettings(eta=0.5, taus=(1, 5, 20, 60), shuffle=shuffle)
        rnd, model, vec, clients = _setup(s)
        rnd.begin(0, vec)
        for u in _uploads(model, vec, clients, s):
            rnd.add(u.jacobian, u.labels.float(), u.outputs)
        new, metrics = rnd.finalize()
        results[shuffle] = new
        assert metrics["aggregated"] == 3 and metrics["ntk_samples"] == 24
        # recompute every candidate's validation loss independently: the chosen tau has the lowest
        ups = _uploads(model, vec, clients, s)
        cands = ntk.evolve(torch.cat([u.jacobian for u in ups]), torch.cat([u.outputs for u in ups]),
                           torch.cat([u.labels for u in ups]), loss="ce", eta=0.5, taus=s.taus)
        losses = {}
        for tau, dw in cands.items():
            m = MLP((6,), 3, (16,))
            set_flat(m, vec + dw)
            with torch.no_grad():
                losses[tau] = float(F.cross_entropy(m(rnd.x_val), rnd.y_val))
        assert metrics["ntk_tau"] == min(losses, key=losses.get)
        torch.testing.assert_close(new, vec + cands[metrics["ntk_tau"]], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[True], results[False], rtol=1e-4, atol=1e-6)


def test_round_refusals():
    s = NTKSettings(taus=(1,), max_samples=16)
    rnd, model, vec, clients = _setup(s)
    rnd.begin(0, vec)
    ups = _uploads(model, vec, clients, s)
    rnd.add(ups[0].jacobian, ups[0].labels, ups[0].outputs)          # 8 rows
    with pytest.raises(UserError, match="ntk_max_samples"):
        rnd.add(ups[1].jacobian, ups[1].labels, ups[1].outputs)      # 8 + 9 > 16
    assert rnd.shuffler.rows == 8 and rnd.uploads == 1
    with pytest.raises(ValueError, match="jacobian"):
        rnd.add(ups[0].jacobian[:, :2], ups[0].labels, ups[0].outputs)
    with pytest.raises(ValueError, match="labels"):
        rnd.add(ups[0].jacobian, ups[0].labels + 7, ups[0].outputs)
    bad = ups[0].outputs.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        rnd.add(ups[0].jacobian, ups[0].labels, bad)
    assert rnd.shuffler.rows == 8
    new, metrics = rnd.finalize()
    assert metrics["ntk_samples"] == 8


def test_projected_round_moves_along_the_unprojected_update():
    base = NTKSettings(eta=0.2, taus=(5,))
    proj = NTKSettings(eta=0.2, taus=(5,), project=4096, seed=9)
    out = {}
    for s in (base, proj):
        rnd, model, vec, clients = _setup(s)
        rnd.begin(3, vec)
        for u in _uploads(model, vec, clients, s, rnd_idx=3):
            assert u.jacobian.shape[2] == (s.project or vec.numel())
            rnd.add(u.jacobian, u.labels, u.outputs)
        out[s.project] = rnd.finalize()[0] - vec
    cos = F.cosine_similarity(out[0], out[4096], dim=0)
    assert cos > 0.9, float(cos)
    assert projection_seed(9, 3) != projection_seed(9, 4)


def test_network_loss_and_validation_split():
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    assert network_loss(logits, labels, "ce") == pytest.approx(float(F.cross_entropy(logits, labels)))
    assert network_loss(logits, labels, "mse") == pytest.approx(
        float(((logits - F.one_hot(labels, 3)) ** 2).sum() / 30))
    from thinwire.data.datasets import federate
    data = federate("digits", 10, "iid", seed=0)
    xv, yv = validation_split(data, 0.1, 0)
    xt, yt = data.dataset.x_train, data.dataset.y_train
    assert len(yv) == round(0.1 * len(yt))
    flat = xt.reshape(len(xt), -1)
    for i in range(0, len(yv), 29):       # every sampled row is a training row with its label
        hit = (flat == xv[i].reshape(1, -1)).all(1).nonzero().reshape(-1)
        assert len(hit) >= 1 and yv[i] in yt[hit]
    x2, _ = validation_split(data, 0.1, 0)
    assert torch.equal(xv, x2)


@pytest.mark.parametrize("field,value", [("ntk_loss", "hinge"), ("ntk_taus", [0, 5]), ("ntk_eta", 0.0),
                                         ("ntk_val_fraction", 0.0), ("ntk_project", -1), ("ntk_subsample", 1.5),
                                         ("ntk_max_samples", 0)])
def test_config_rejects_bad_ntk_values_naming_the_field(field, value):
    with pytest.raises(ConfigError) as e:
        build(RunConfig, {"strategy": "ntk", field: value})
    assert str(e.value).startswith(field + ":") and "\n" not in str(e.value)


def test_config_parses_ntk_flags_from_strings():
    cfg = build(RunConfig, {"strategy": "ntk", "ntk_taus": "10,20", "ntk_project": "64", "ntk_shuffle": "true",
                            "ntk_subsample": "0.5"})
    s = NTKSettings.from_config(cfg)
    assert s.taus == (10, 20) and s.project == 64 and s.shuffle and s.subsample == 0.5


def test_served_push_limit_defaults_to_the_strategy_bound(tmp_path):
    """The parameter server's default per-push limit is the ntk strategy's Jacobian bound (the
    largest client's rows x d_2 x d fp32, or x d' when projected), not the model-delta default; an
    explicit limit still wins, and model-delta strategies keep 4 x the fp32 model + 1 MiB."""
    from thinwire.data.datasets import dataset_from_config
    from thinwire.server.app import ParameterServer, ServeOptions

    kw = {"out_dir": str(tmp_path), "dataset": "digits", "clients": 20, "per_round": 4, "progress": False}
    d = 64 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
    for extra, cols, frac in (({}, d, 1.0), ({"ntk_project": 300, "ntk_subsample": 0.5}, 300, 0.5)):
        cfg = build(RunConfig, {**kw, "name": f"ntk{cols}", "strategy": "ntk", **extra})
        n = max(max(1, -(-int(s) * frac // 1)) for s in dataset_from_config(cfg).client_sizes())
        body = 4 * int(n) * 10 * cols + 4 * int(n) * 10 + 4 * int(n)      # what the largest client sends
        ps = ParameterServer(cfg, ServeOptions(port=0))
        assert body < ps.ingest.max_update_bytes <= 2 * body + (2 << 20), (ps.ingest.max_update_bytes, body)
        assert ps.ingest.max_update_bytes > 4 * 4 * d + (1 << 20) or cols < d     # above the model-delta default
        assert ParameterServer(cfg, ServeOptions(port=0, max_update_bytes=12345)).ingest.max_update_bytes == 12345
    cfg = build(RunConfig, {**kw, "name": "fedavg", "strategy": "fedavg"})
    assert ParameterServer(cfg, ServeOptions(port=0)).ingest.max_update_bytes == 4 * 4 * d + (1 << 20)
