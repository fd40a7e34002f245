"""BUG loader, cached representation extraction and the bug experiment's wiring.

Everything runs on small BUG-format CSVs and tiny random transformers built
from a config: no download, no packaged model.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from _tiny_models import tiny_bert, tiny_llama  # noqa: E402
from fairsteer.errors import InputError  # noqa: E402
from fairsteer.torch.extract import pool  # noqa: E402
from fairsteer_experiments.data.bug import MASK_WORD, load_bug, mask_profession  # noqa: E402
from fairsteer_experiments.models import encode  # noqa: E402

WORDS = ["the", "a", "was", "at", "home", "today", "she", "he", "said", "new", "old"]
WORDS += ["big", "small", "kind", "good"]


class WordTokenizer:
    """Whitespace tokenizer with right padding: enough of the HF call convention."""

    def __init__(self, vocab=64):
        self.vocab = vocab

    def ids(self, sentence):
        return [1 + sum(map(ord, w)) % (self.vocab - 1) for w in sentence.split()]

    def __call__(self, sentences, padding, truncation, max_length, return_tensors):
        rows = [self.ids(s)[:max_length] for s in sentences]
        width = max(map(len, rows))
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def sentences(n, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(2, 9))) for _ in range(n)]


@pytest.mark.parametrize(("net", "pooling"), [(tiny_bert, "mean"), (tiny_llama, "last")])
def test_batched_pooling_equals_one_sentence_at_a_time(net, pooling):
    tok, model = WordTokenizer(), net()
    sents = sentences(13)
    batched = encode(
        sents,
        model="tiny",
        layer=1,
        pooling=pooling,
        batch_size=5,
        cache_dir=None,
        progress=False,
        encoder=(tok, model),
    )
    direct = []
    with torch.no_grad():
        for s in sents:  # no padding at all: the pooled vector by definition
            ids = torch.tensor([tok.ids(s)])
            h = model(input_ids=ids, output_hidden_states=True).hidden_states[1][0]
            direct.append((h.mean(0) if pooling == "mean" else h[-1]).numpy())
    # float32 network; padded and unpadded attention differ by round-off ~1e-6.
    np.testing.assert_allclose(batched, np.array(direct), atol=1e-5)


def test_encode_cache_is_keyed_by_sentences_and_layer(tmp_path):
    calls = []
    tok, model = WordTokenizer(), tiny_bert()

    def counting(**kw):
        calls.append(1)
        return model(**kw)

    enc = (tok, counting)
    sents = sentences(7)
    first = encode(sents, model="tiny", cache_dir=tmp_path, progress=False, encoder=enc)
    n = len(calls)
    again = encode(sents, model="tiny", cache_dir=tmp_path, progress=False, encoder=enc)
    assert len(calls) == n  # served from disk
    np.testing.assert_array_equal(first, again)
    encode([*sents[:-1], "changed"], model="tiny", cache_dir=tmp_path, progress=False, encoder=enc)
    encode(sents, model="tiny", layer=1, cache_dir=tmp_path, progress=False, encoder=enc)
    assert len(calls) > n
    assert len(list(tmp_path.glob("*.npy"))) == 3
    assert not list(tmp_path.glob("*.tmp*"))  # atomic write leaves nothing behind


def test_generic_encode_loads_the_encoder_only_on_a_cache_miss(tmp_path):
    from fairsteer.torch.extract import encode as encode_states

    loads = []

    def loader():
        loads.append(1)
        return WordTokenizer(), tiny_bert()

    sents = sentences(5)
    kw = dict(encoder=loader, name="tiny", cache_dir=tmp_path, progress=False)
    first = encode_states(sents, **kw)
    again = encode_states(sents, **kw)
    assert loads == [1] and first.shape[0] == 5
    np.testing.assert_array_equal(first, again)
    # the experiments' named encode writes and reads the same cache file
    named = encode(sents, model="tiny", cache_dir=tmp_path, progress=False, encoder=loader())
    np.testing.assert_array_equal(named, first)
    assert len(list(tmp_path.glob("tiny-L-1-mean-*.npy"))) == 1


def test_encode_bad_input():
    with pytest.raises(InputError, match="model must be one of"):
        encode(["x"], model="gpt5", cache_dir=None)
    with pytest.raises(InputError, match="pooling"):
        encode(["x"], pooling="max", cache_dir=None)
    with pytest.raises(InputError, match="layer 9 out of range"):
        encode(
            ["a b"],
            model="tiny",
            layer=9,
            cache_dir=None,
            progress=False,
            encoder=(WordTokenizer(), tiny_bert()),
        )
    with pytest.raises(InputError, match="pooling"):
        pool(torch.zeros(1, 2, 3), torch.ones(1, 2), "max")


def test_mask_profession():
    tokens = ["The", "Nurse", "said", "she", "was", "tired"]
    assert mask_profession(tokens, 1, "nurse") == f"The {MASK_WORD} said she was tired"
    assert mask_profession(tokens, 2, "nurse") is None  # index does not point at it
    assert mask_profession(tokens, 17, "nurse") is None


def write_bug_csv(path, per_cell, seed=0):
    """A BUG-format file: per_cell[(profession, gender)] sentences each."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for (prof, gender), n in per_cell.items():
        for _ in range(n):
            words = [str(w) for w in rng.choice(WORDS, size=rng.integers(2, 7))]
            i = int(rng.integers(0, len(words) + 1))
            words.insert(i, prof.capitalize() if rng.random() < 0.3 else prof)
            rows.append(
                {
                    "sentence_text": " ".join(words),
                    "tokens": repr(words),
                    "profession": words[i],
                    "profession_first_index": i,
                    "g": "x",
                    "predicted gender": gender,
                    "stereotype": 0,
                }
            )
    # A row whose index is wrong and a neutral-gender row: both must be dropped.
    rows.append({**rows[0], "profession_first_index": 99})
    rows.append({**rows[1], "predicted gender": "neutral"})
    pd.DataFrame(rows).to_csv(path, index=False)


def test_load_bug_filters_masks_and_samples(tmp_path):
    path = tmp_path / "bug.csv"
    cells = {
        ("nurse", "female"): 30,
        ("nurse", "male"): 12,
        ("judge", "female"): 11,
        ("judge", "male"): 40,
        ("pilot", "female"): 3,
        ("pilot", "male"): 50,
    }
    write_bug_csv(path, cells)
    data = load_bug(path=path, min_per_gender=10)
    assert data.classes == ("judge", "nurse")  # pilot has 3 female sentences
    assert len(data.sentences) == 30 + 12 + 11 + 40  # bad-index and neutral rows dropped
    assert set(data.genders) == {"female", "male"}
    assert set(data.professions) == {"judge", "nurse"}  # lower-cased
    for s in data.sentences:
        words = s.split()
        assert MASK_WORD in words and not {"nurse", "Nurse", "judge", "Judge"} & set(words)
    sub = load_bug(path=path, min_per_gender=10, limit=20, seed=3)
    assert len(sub.sentences) == 20 and set(sub.sentences) <= set(data.sentences)
    again = load_bug(path=path, min_per_gender=10, limit=20, seed=3)
    assert again.sentences == sub.sentences and list(again.genders) == list(sub.genders)
    with pytest.raises(InputError, match="limit"):
        load_bug(path=path, min_per_gender=10, limit=0)
    with pytest.raises(InputError, match="no profession"):
        load_bug(path=path, min_per_gender=1000)


def test_leace_wiring_erases_linear_group_information():
    from fairsteer_experiments.bug import leace

    rng = np.random.default_rng(0)
    g = rng.choice(["f", "m"], 600)
    X = rng.normal(size=(600, 5)) + (g == "f")[:, None] * np.array([2.0, -1, 0, 0, 0.5])
    A, w, B = leace(X, g, X[:50])
    assert w is None
    Z = (g == "f").astype(float)
    # LEACE's guarantee: zero cross-covariance with the concept (round-off only).
    cross = (A - A.mean(0)).T @ (Z - Z.mean()) / len(Z)
    np.testing.assert_allclose(cross, 0.0, atol=1e-10)
    np.testing.assert_allclose(B, A[:50], atol=1e-12)  # same affine eraser on test rows


def test_noise_floor_matches_gap_of_gender_independent_predictions():
    from fairsteer.metrics import rms_tpr_gap
    from fairsteer_experiments.bug import noise_floor

    rng = np.random.default_rng(1)
    n = 4000
    y = rng.integers(0, 4, n)
    g = rng.choice(["f", "m"], n)
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, 4, n))  # independent of g
    # Predictions already independent of gender: the shuffled gap is the same
    # random variable as the observed one; 20 shuffles average to within
    # a few standard errors (~0.01 at n=4000, 4 classes).
    observed = np.mean(
        [rms_tpr_gap(y, pred, sensitive_features=rng.permutation(g)) for _ in range(50)]
    )
    assert abs(noise_floor(y, pred, g, seed=0) - observed) < 0.01
    biased = np.where(g == "f", y, (y + 1) % 4)  # perfect for f, always wrong for m
    assert rms_tpr_gap(y, biased, sensitive_features=g) == pytest.approx(1.0)
    assert noise_floor(y, biased, g, seed=0) < 0.1


def test_bug_experiment_end_to_end_on_a_tiny_model(tmp_path, capsys):
    from fairsteer_experiments.bug import ROWS, build_report, format_table, run_bug

    path = tmp_path / "bug.csv"
    cells = {(p, s): 40 for p in ("nurse", "judge", "pilot") for s in ("female", "male")}
    write_bug_csv(path, cells)
    kw = dict(
        data_path=str(path),
        min_per_gender=10,
        limit=None,
        seeds=(0, 1),
        cache_dir=None,
        progress=False,
        encoder=(WordTokenizer(), tiny_bert()),
        model="tiny",
    )
    res = run_bug(**kw)
    assert set(res["summary"]) == set(ROWS)
    assert res["n_professions"] == 3 and res["n_sentences"] == 240
    for row in ROWS:
        for k in ("accuracy", "rms_tpr_gap", "max_dp_gap"):
            assert 0.0 <= res["summary"][row][k]["mean"] <= 1.0
    assert 0.0 <= res["noise_floor"]["mean"] <= 1.0
    assert res["summary"]["Original"]["rms_tpr_gap_vs_original"]["mean"] == 0.0
    pytest.importorskip("matplotlib")
    build_report(res, str(tmp_path / "bug.html"))
    html = (tmp_path / "bug.html").read_text()
    assert html.count("<img") == 2 and "noise floor" in html
    assert "paired per seed" in html and "iterations" in html
    assert "noise floor" in format_table(res)
    # The same seeds reproduce the same numbers.
    again = run_bug(**kw)
    assert json.dumps(again["summary"]) == json.dumps(res["summary"])
    pred = run_bug(**{**kw, "group_source": "predicted", "seeds": (0,)})
    assert 0.0 <= pred["group_accuracy"][0] <= 1.0
    with pytest.raises(InputError, match="group source"):
        run_bug(**{**kw, "group_source": "oracle"})


def test_sharded_extraction_resumes_and_fits_like_one_array(tmp_path):
    from fairsteer.fit import fit_model
    from fairsteer.torch.extract import encode as encode_states
    from fairsteer.torch.extract import encode_shards, fit_shards

    loads = []
    tok, model = WordTokenizer(), tiny_bert()

    def loader():
        loads.append(1)
        return tok, model

    sents = sentences(50, seed=3)
    kw = dict(encoder=loader, name="tiny", out_dir=tmp_path, shard_size=16, progress=False)
    paths = encode_shards(sents, **kw)
    assert len(paths) == 4 and all(p.exists() for p in paths) and len(loads) == 1
    paths[2].unlink()  # an interrupted run: one shard missing
    again = encode_shards(sents, **kw)
    assert again == paths and len(loads) == 2  # only the missing shard was encoded
    assert len(list(tmp_path.glob("*.npy"))) == 4 and not list(tmp_path.glob("*.tmp*"))
    whole = encode_states(sents, encoder=(tok, model), name="tiny", cache_dir=None, progress=False)
    stacked = np.concatenate([np.load(p) for p in paths])
    # the same float32 network on the same padded batches of <= 16 sentences vs 50:
    # padding widths differ, so attention round-off ~1e-6
    np.testing.assert_allclose(stacked, whole, atol=1e-5)
    rng = np.random.default_rng(0)
    y, g = rng.integers(0, 2, 50), np.array(["f", "m"])[rng.integers(0, 2, 50)]
    y[:4], g[:4] = [0, 1, 0, 1], ["f", "f", "m", "m"]
    sharded = fit_shards(paths, y, g, covariance="shared", shrinkage="oas")
    one = fit_model(stacked.astype(np.float64), y, g, covariance="shared", shrinkage="oas")
    # exact merges of the same float64 rows: round-off of sums of 50 terms
    np.testing.assert_allclose(sharded.covariances, one.covariances, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sharded.means, one.means, rtol=1e-12, atol=1e-12)
    assert sharded.groups == one.groups and sharded.classes == one.classes
    with pytest.raises(InputError, match=r"shards hold more rows than labels \(49\)"):
        fit_shards(paths, y[:49], g[:49])
    with pytest.raises(InputError, match="shards hold 50 rows but 51 labels"):
        fit_shards(paths, np.append(y, 0), np.append(g, "f"))


def test_warm_started_probe_reaches_the_cold_optimum():
    """A probe started from another data set's solution converges to the same optimum
    (the multinomial L2 objective is strictly convex), in fewer iterations."""
    from fairsteer_experiments.bug import _probe

    rng = np.random.default_rng(0)
    n, d, K = 2000, 20, 4
    W = rng.normal(size=(d, K))
    X = rng.normal(size=(n, d))
    y = np.argmax(X @ W + rng.gumbel(size=(n, K)), axis=1)
    base = _probe(0).fit(X, y)
    X2 = X + 0.05 * rng.normal(size=(n, d))  # a nearby data set, as a steered one is
    cold = _probe(0).fit(X2, y)
    warm = _probe(0, base).fit(X2, y)
    assert base.warm_start is False  # the start is copied, not changed
    from scipy.special import logsumexp

    def objective(p):  # sklearn's: C * sum of log losses + ||W||^2 / 2, with C = 1
        Z = X2 @ p.coef_.T + p.intercept_
        return (logsumexp(Z, axis=1) - Z[np.arange(n), y]).sum() + 0.5 * (p.coef_**2).sum()

    # lbfgs stops at a gradient tolerance of 1e-4, which leaves the objective
    # ~1e-5 relative above the optimum from either start; 1e-4 bounds that.
    assert objective(warm) == pytest.approx(objective(cold), rel=1e-4)
    assert np.mean(warm.predict(X2) == cold.predict(X2)) > 0.995
    assert warm.n_iter_.max() <= cold.n_iter_.max()


@pytest.mark.parametrize(
    ("text", "expected"), [("all", None), ("ALL", None), ("5000", 5000), ("x", "error")]
)
def test_limit_argument(text, expected):
    import argparse

    from fairsteer_experiments.bug import _limit

    if expected == "error":
        with pytest.raises(argparse.ArgumentTypeError, match="number of sentences or 'all'"):
            _limit(text)
    else:
        assert _limit(text) == expected
