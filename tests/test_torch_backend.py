"""Torch backend: streaming moments, module maps, the forward hook (tiny random models)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from _tiny_models import tiny_bert  # noqa: E402
from fairsteer.errors import InputError  # noqa: E402
from fairsteer.fit import fit_model  # noqa: E402
from fairsteer.maps import SteeringMaps  # noqa: E402
from fairsteer.solve import solve  # noqa: E402
from fairsteer.stats import cell_statistics  # noqa: E402
from fairsteer.torch import SteeringModule, StreamingMoments, steer_layer  # noqa: E402


def sample(n=1200, d=6, seed=0):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 2, n)
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, d)) * (1 + g[:, None]) + y[:, None] + 50.0
    return X, y, g


def test_streaming_moments_equal_one_numpy_fit():
    X, y, g = sample()
    X = X.astype(np.float32)  # hidden states usually arrive in float32
    acc = StreamingMoments([0, 1], [0, 1, 2])
    for lo in range(0, len(X), 250):
        sl = slice(lo, lo + 250)
        acc.update(torch.tensor(X[sl]), torch.tensor(y[sl]), torch.tensor(g[sl]))
    full = cell_statistics(X.astype(np.float64), y, g)
    np.testing.assert_array_equal(acc.stats.counts, full.counts)
    # float64 accumulation of values ~50: Chan's merge agrees to ~1e-12 relative.
    np.testing.assert_allclose(acc.stats.means, full.means, rtol=1e-12)
    np.testing.assert_allclose(acc.stats.scatters, full.scatters, rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("covariance", ["shared", "per-class"])
def test_torch_module_equals_numpy_maps(covariance):
    X, y, g = sample(seed=1)
    model = fit_model(X, y, g, covariance=covariance)
    maps = SteeringMaps.from_solution(model, solve(model))
    module = SteeringModule(maps)
    xt, gt = torch.tensor(X), torch.tensor(g)
    # Same float64 formulas evaluated by torch and numpy: round-off only.
    np.testing.assert_allclose(
        module(xt, gt, torch.tensor(y)).numpy(), maps.steer(X, y, g), atol=1e-9
    )
    for mode in ("soft", "hard", "none"):
        np.testing.assert_allclose(
            module(xt, gt, mode=mode).numpy(), maps.transform(X, g, mode), atol=1e-8
        )
    # float32 hidden states come back float32; an empty batch passes through.
    assert module(xt[:3].float(), gt[:3]).dtype == torch.float32
    assert module(xt[:0], gt[:0]).shape == (0, X.shape[1])


def test_hook_changes_exactly_the_chosen_layer_and_is_removed():
    model = tiny_bert()
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(ids, output_hidden_states=True).hidden_states
        with steer_layer(model.encoder.layer[1], lambda h: h + 1.0):
            steered = model(ids, output_hidden_states=True).hidden_states
        after = model(ids, output_hidden_states=True).hidden_states
    # hidden_states[k] is the output of layer k-1: inputs and layer 0 unchanged,
    # layer 1 shifted by exactly 1, later layers changed.
    for k in (0, 1):
        torch.testing.assert_close(steered[k], base[k])
    torch.testing.assert_close(steered[2], base[2] + 1.0)
    assert not torch.allclose(steered[3], base[3])
    for a, b in zip(after, base):
        torch.testing.assert_close(a, b)


def test_hook_is_removed_on_exception():
    model = tiny_bert()
    layer = model.encoder.layer[0]
    with pytest.raises(RuntimeError, match="boom"), steer_layer(layer, lambda h: h * 0):
        raise RuntimeError("boom")
    assert len(layer._forward_hooks) == 0


def _layer_modules(model, layers, seed=0):
    """A SteeringModule per layer, fitted on that layer's token states of random inputs."""
    from fairsteer.torch import StreamingMoments

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50, (40, 6), generator=gen)
    groups = torch.randint(0, 2, (40,), generator=gen)
    labels = torch.randint(0, 2, (40,), generator=gen)
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
    out = {}
    for k in layers:
        acc = StreamingMoments([0, 1], [0, 1], covariance="shared", shrinkage="oas")
        states = hidden[k + 1].reshape(-1, hidden[k + 1].shape[-1])
        acc.update(states, labels.repeat_interleave(6), groups.repeat_interleave(6))
        fitted = acc.model()
        out[k] = SteeringModule(SteeringMaps.from_solution(fitted, solve(fitted, "all-subgroups")))
    return out


def test_steer_model_equals_manual_per_token_steering():
    from fairsteer.torch import steer_model

    model = tiny_bert()
    modules = _layer_modules(model, [0, 2])
    ids = torch.randint(0, 50, (3, 5), generator=torch.Generator().manual_seed(1))
    groups = torch.tensor([0, 1, 1])
    with torch.no_grad():
        base = model(ids, output_hidden_states=True).hidden_states

        # manual: layer 0 only, the user expands groups to tokens
        def fn(h):
            flat = h.reshape(-1, h.shape[-1])
            return modules[0](flat, groups.repeat_interleave(5)).reshape(h.shape)

        with steer_layer(model.encoder.layer[0], fn):
            manual = model(ids, output_hidden_states=True).hidden_states
        with steer_model(model, {"encoder.layer.0": modules[0]}, groups):
            auto = model(ids, output_hidden_states=True).hidden_states
        with steer_model(model, {model.encoder.layer[0]: modules[0]}, groups[:, None].expand(3, 5)):
            per_token = model(ids, output_hidden_states=True).hidden_states
        with steer_model(model, {"encoder.layer.0": modules[0]}, groups, alpha=0.0):
            still = model(ids, output_hidden_states=True).hidden_states
    # the same float64 maps on the same states: equal to float32 round-off
    for k in range(len(base)):
        torch.testing.assert_close(auto[k], manual[k])
        torch.testing.assert_close(per_token[k], manual[k])
        torch.testing.assert_close(still[k], base[k])
    assert not torch.allclose(auto[1], base[1])


def test_steer_model_leaves_padding_and_removes_every_hook():
    from fairsteer.torch import steer_model

    model = tiny_bert()
    modules = _layer_modules(model, [0, 2])
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        base = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    # transformers installs hooks of its own: only ours must go
    before = [dict(layer._forward_hooks) for layer in model.encoder.layer]
    with (
        torch.no_grad(),
        steer_model(
            model,
            {"encoder.layer.0": modules[0], "encoder.layer.2": modules[2]},
            torch.tensor([1, 0]),
            attention_mask=mask,
        ) as handle,
    ):
        steered = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states
        handle.set_groups(torch.tensor([0, 0]), attention_mask=mask)
        again = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    # layer 0's output at padded positions is exactly the unsteered one
    torch.testing.assert_close(steered[1][0, 4:], base[1][0, 4:], rtol=0, atol=0)
    assert not torch.allclose(steered[1][0, :4], base[1][0, :4])
    assert not torch.allclose(again[1][0, :4], steered[1][0, :4])  # new groups took effect
    assert [dict(layer._forward_hooks) for layer in model.encoder.layer] == before
    with (
        pytest.raises(InputError, match="groups must have shape"),
        steer_model(model, {"encoder.layer.0": modules[0]}, torch.tensor([0, 1, 0])),
        torch.no_grad(),
    ):
        model(ids)
    with pytest.raises(InputError, match="no submodule"), steer_model(model, {"nope": modules[0]}):
        pass
