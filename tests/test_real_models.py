"""Opt-in checks on the packaged real models (FAIRSTEER_REAL_MODELS=1).

They load MiniLM and SmolLM2 from their wheels (no network) and check the
extraction against a direct computation with the same network; CI skips them
because loading SmolLM2 takes ~15 s plus de-quantisation.
"""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.realmodel,
    pytest.mark.skipif(
        os.environ.get("FAIRSTEER_REAL_MODELS") != "1", reason="set FAIRSTEER_REAL_MODELS=1"
    ),
]

SENTENCES = ["The person said she was tired .", "A person fixed the car ."]


@pytest.mark.parametrize(
    ("model", "dim", "pooling"), [("minilm", 384, "mean"), ("smollm2", 576, "last")]
)
def test_packaged_model_extraction(model, dim, pooling, tmp_path):
    from fairsteer_experiments.models import encode, load_encoder

    reps = encode(SENTENCES, model=model, cache_dir=tmp_path, progress=False)
    assert reps.shape == (2, dim) and np.all(np.isfinite(reps))
    tok, net = load_encoder(model, tmp_path)  # SmolLM2 now loads from the saved copy
    with torch.no_grad():
        for k, s in enumerate(SENTENCES):
            enc = tok([s], return_tensors="pt")
            h = net(**enc, output_hidden_states=True).hidden_states[-1][0]
            direct = h.mean(0) if pooling == "mean" else h[-1]
            # One sentence alone vs in a padded batch: float32 round-off ~1e-5.
            np.testing.assert_allclose(reps[k], direct.numpy(), rtol=1e-4, atol=1e-4)
