"""Steering generation (THEORY 8): the hook, the maps, the ideal's equal acceptance, the CLI.

Everything runs on a tiny random Llama causal LM built from a config (no
download) and on synthetic Gaussian states.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fairsteer.bayes import log_joint  # noqa: E402
from fairsteer.errors import InputError  # noqa: E402
from fairsteer.torch.generation import (  # noqa: E402
    METHODS,
    GroupSteering,
    build_steering,
    concept_posterior,
    decoder_layer,
    fit_cells,
    steer_generation,
)
from fairsteer_experiments.generation import repeat_rate, tiny_lm  # noqa: E402

LAYER = 1
D = 16  # hidden size of the tiny model


def random_steering(seed=0, groups=("g0", "g1")):
    rng = np.random.default_rng(seed)
    m = len(groups)
    lin = np.eye(D) + 0.3 * rng.normal(size=(m, D, D))
    off = rng.normal(size=(m, D))
    return GroupSteering("group-ot", tuple(groups), lin, off, off, np.stack([np.eye(D)] * m))


def batch(tok, texts):
    enc = tok(texts)
    return enc["input_ids"], enc["attention_mask"]


def generate(net, ids, mask, steering, groups, alpha, n_new=6):
    with steer_generation(net, LAYER, steering, groups, alpha=alpha, record=True) as rec:
        out = net.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=n_new,
            do_sample=False,
            pad_token_id=256,
            eos_token_id=None,
        )
    return out, rec.states


def layer_outputs(net, out, mask, steering=None, groups=None, alpha=1.0, P=None):
    """hidden_states of one full forward pass (no cache), optionally steered."""
    full_mask = torch.cat([mask, torch.ones(out.shape[0], out.shape[1] - mask.shape[1])], 1).long()
    pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
    kw = dict(input_ids=out, attention_mask=full_mask, position_ids=pos, output_hidden_states=True)
    with torch.no_grad():
        if steering is None:
            return net(**kw).hidden_states
        with steer_generation(net, LAYER, steering, groups, alpha=alpha, prompt_length=P):
            return net(**kw).hidden_states


def test_hook_changes_only_the_layer_the_generation_positions_and_steered_rows():
    tok, net = tiny_lm()
    ids, mask = batch(tok, ["a comedy", "the horror film x", "ok"])  # left padded
    P = ids.shape[1]
    steering = random_steering()
    groups = ["g1", None, "g0"]
    with torch.no_grad():
        out, rec = generate(net, ids, mask, steering, groups, alpha=0.7)
    plain = layer_outputs(net, out, mask)
    steered = layer_outputs(net, out, mask, steering, groups, alpha=0.7, P=P)
    # layers before the chosen one (hidden_states[0..LAYER]) see the same input
    for k in range(LAYER + 1):
        assert torch.equal(plain[k], steered[k])
    h, hs = plain[LAYER + 1].double(), steered[LAYER + 1].double()
    # positions before P - 1 and the unsteered row are untouched, bit for bit
    assert torch.equal(hs[:, : P - 1], h[:, : P - 1])
    assert torch.equal(hs[1], h[1])
    # generation positions of steered rows: exactly h + alpha (A_a h + b_a - h)
    for row, g in ((0, "g1"), (2, "g0")):
        expect = steering.apply(h[row, P - 1 :].numpy(), [g] * (out.shape[1] - P + 1), 0.7)
        # float32 layer output cast back after a float64 map: relative round-off ~1e-7
        np.testing.assert_allclose(hs[row, P - 1 :].numpy(), expect, rtol=1e-5, atol=1e-5)
        assert not np.allclose(expect, h[row, P - 1 :].numpy())
    # the recorder of cached generate() holds the states that produced each new token,
    # equal to the full-sequence pass (cache vs no cache: float32 round-off ~1e-6)
    n_new = out.shape[1] - P
    assert rec.shape == (3, n_new, D)
    np.testing.assert_allclose(rec.numpy(), hs[:, P - 1 : -1].numpy(), atol=1e-4)


def test_alpha_zero_is_the_identity():
    tok, net = tiny_lm()
    ids, mask = batch(tok, ["hello there", "a b"])
    with torch.no_grad():
        out0, rec0 = generate(net, ids, mask, None, ["g0", "g1"], alpha=1.0)
        out1, rec1 = generate(net, ids, mask, random_steering(), ["g0", "g1"], alpha=0.0)
        out2, _ = generate(net, ids, mask, random_steering(), ["g0", "g1"], alpha=3.0)
    assert torch.equal(out0, out1)
    assert torch.equal(rec0, rec1)
    assert not torch.equal(out0, out2)  # a strong steer does change the greedy tokens


def test_hook_input_checks_and_cleanup():
    tok, net = tiny_lm()
    ids, mask = batch(tok, ["a", "b"])
    layer = decoder_layer(net, LAYER)
    with (
        pytest.raises(InputError, match="rows but 1 groups"),
        steer_generation(net, LAYER, random_steering(), ["g0"]),
    ):
        net(input_ids=ids, attention_mask=mask)
    assert not layer._forward_hooks and not layer._forward_pre_hooks  # removed on error
    with pytest.raises(InputError, match="unknown group"):
        random_steering().codes(["nope"])
    with pytest.raises(InputError, match="out of range"):
        decoder_layer(net, 7)


def gaussian_states(seed=0, n=400, d=6, groups=("a", "b", "c")):
    """Cells with group-dependent separation (so the groups are not ideal)."""
    rng = np.random.default_rng(seed)
    X, y, g = [], [], []
    for k, name in enumerate(groups):
        M = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
        shift = (0.5 + k) * rng.normal(size=d)
        for c in (0, 1):
            Z = rng.normal(size=(n + 37 * c, d)) @ M.T * (1 + 0.2 * c) + c * shift
            X.append(Z + 3 * k)
            y += [c] * len(Z)
            g += [name] * len(Z)
    return np.concatenate(X), np.array(y), np.array(g)


def moments(Z):
    mu = Z.mean(0)
    return mu, (Z - mu).T @ (Z - mu) / len(Z)  # ML covariance, as the cells use


@pytest.mark.parametrize("method", ["ef-affirmative", "ef-all-subgroups", "group-ot"])
def test_steered_states_have_the_target_cell_moments_on_the_fitting_sample(method):
    X, y, g = gaussian_states()
    cells = fit_cells(X, y, g, covariance="shared", shrinkage=None)
    source = fit_cells(X, y, g, covariance="per-class", shrinkage=None)
    st = build_steering(cells, method, source=source)
    for a, name in enumerate(cells.groups):
        rows = (g == name) & (y == 0)
        mu, S = moments(st.apply(X[rows], [name] * rows.sum(), 1.0))
        if method == "group-ot":
            target_mu, target_S = source.means[a, 1], source.covariances[a, 1]
        else:  # the IDEAL desired cell
            target_mu, target_S = st.solution.ideal.means[a, 1], st.solution.ideal.covariances[a, 1]
        # exact up to float64 round-off of sqrtm/inverse on condition numbers ~1e2
        np.testing.assert_allclose(mu, target_mu, atol=1e-9)
        np.testing.assert_allclose(S, target_S, atol=1e-9)


def test_vector_methods_and_alpha_interpolation():
    X, y, g = gaussian_states()
    cells = fit_cells(X, y, g, covariance="shared", shrinkage=None)
    pooled = build_steering(cells, "pooled-vector")
    v = X[y == 1].mean(0) - X[y == 0].mean(0)
    np.testing.assert_allclose(pooled.offset, np.tile(v, (3, 1)), atol=1e-12)
    per = build_steering(cells, "group-vectors")
    H = X[:5]
    for alpha in (0.0, 0.3, 1.0, 2.5):
        np.testing.assert_allclose(per.apply(H, ["b"] * 5, alpha), H + alpha * per.offset[1])
    with pytest.raises(InputError, match="method must be one of"):
        build_steering(cells, "magic")
    with pytest.raises(InputError, match="reference applies"):
        build_steering(cells, "group-ot", reference="a")


def test_ideal_detector_accepts_ef_steered_states_equally_in_every_group():
    # exactly on the fitting sample: the ideal log-odds is affine in h (shared
    # covariance), so its mean and variance over each group's steered states
    # follow from those states' moments, which are the ideal desired cell's
    X, y, g = gaussian_states(n=300)
    cells = fit_cells(X, y, g, covariance="shared", shrinkage=None)
    source = fit_cells(X, y, g, covariance="per-class", shrinkage=None)
    for method in ("ef-affirmative", "ef-all-subgroups"):
        st = build_steering(cells, method, source=source)
        stats = []
        for a, name in enumerate(cells.groups):
            rows = (g == name) & (y == 0)
            H = st.apply(X[rows], [name] * rows.sum(), 1.0)
            lj = log_joint(st.solution.ideal, H, np.full(len(H), a))
            logit = lj[:, 1] - lj[:, 0]
            stats.append((logit.mean(), logit.var()))
        # float64 round-off through Cholesky solves of condition ~1e2 on values ~1e1
        np.testing.assert_allclose(stats, [stats[0]] * len(stats), rtol=1e-8)
    # in law: a large fresh sample from the fitted cells, steered, is accepted at
    # equal rates; per-group vectors are not (their separations differ)
    model = fit_cells(X, y, g, covariance="shared", shrinkage=None)
    st = build_steering(model, "ef-affirmative")
    vec = build_steering(model, "group-vectors")
    rng = np.random.default_rng(1)
    rates, vrates = [], []
    n = 40_000
    for a, name in enumerate(model.groups):
        Z = rng.multivariate_normal(model.means[a, 0], model.covariances[a, 0], size=n)
        for s, out in ((st, rates), (vec, vrates)):
            H = s.apply(Z, [name] * n, 1.0)
            out.append(np.mean(concept_posterior(st.solution.ideal, H, [name] * n) >= 0.5))
    # binomial standard error of a rate from 40,000 draws is <= 0.0025; 5 SE of a difference
    assert np.ptp(rates) < 5 * np.sqrt(2) * 0.0025
    assert np.ptp(vrates) > 0.05


def test_repeat_rate():
    assert repeat_rate([1, 2, 3, 1, 2, 3]) == pytest.approx(1 - 3 / 4)
    assert repeat_rate([1, 2]) == 0.0
    assert repeat_rate(list(range(10))) == 0.0


def test_methods_run_on_tiny_lm_states():
    # fit on the tiny model's own generation states, build every method
    tok, net = tiny_lm()
    texts = ["a good film", "a bad film", "the end", "so nice"]
    ids, mask = batch(tok, texts)
    with torch.no_grad():
        _, states = generate(net, ids, mask, None, [None] * 4, alpha=0.0, n_new=40)
    X = states.reshape(-1, D).double().numpy()
    y = np.repeat([0, 1, 0, 1], 40)
    g = np.repeat(["x", "x", "y", "y"], 40)
    cells = fit_cells(X, y, g)
    for m in METHODS:
        st = build_steering(cells, m)
        assert st.offset.shape == (2, D)
        assert np.isfinite(st.apply(X, list(g), 0.5)).all()


@pytest.mark.slow
def test_cli_quick_on_the_tiny_model(tmp_path, capsys):
    from fairsteer.cli import main

    report = tmp_path / "gen.html"
    code = main(
        ["experiment", "generation", "--domain", "movies", "--quick", "--model", "tiny",
         "--json", "--report", str(report)]
    )  # fmt: skip
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    assert res["groups"] == ["comedy", "horror"]
    keys = {f"{m}@1" for m in METHODS} | {"unsteered@0", "prompted@0"}
    assert set(res["summary"]) == keys
    assert res["summary"]["unsteered@0"]["mean_effect"]["mean"] == 0.0
    assert "Example continuations" in report.read_text()
