"""Torch backend: streaming moments, steering maps as modules, a forward hook.

Optional: needs ``torch`` (the ``torch`` extra). The core never imports it.

- :class:`StreamingMoments` accumulates per-cell count / mean / centred
  scatter from batches of hidden states in float64 and yields the same
  :class:`fairsteer.stats.CellStats` as one numpy fit (Chan's merge).
- :class:`SteeringModule` is a :class:`fairsteer.maps.SteeringMaps` as a
  ``torch.nn.Module`` (any device): labelled, soft, hard or no steering.
- :func:`steer_layer` attaches a function to one layer's output through a
  forward hook and always removes it, also when the body raises.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from fairsteer.errors import InputError
from fairsteer.maps import SteeringMaps
from fairsteer.options import UNLABELED_MODES
from fairsteer.stats import CellStats

__all__ = ["SteeringModule", "StreamingMoments", "steer_layer"]


class StreamingMoments:
    """Per-(group, class) moments of a stream of batches, accumulated in float64.

    Parameters
    ----------
    groups, classes : sequence
        Label sets; batches pass integer codes into them.
    """

    def __init__(self, groups: Sequence[Hashable], classes: Sequence[Hashable]) -> None:
        self.groups, self.classes = tuple(groups), tuple(classes)
        self._stats: CellStats | None = None

    @torch.no_grad()
    def update(self, hidden: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> None:
        """Add a batch: ``hidden`` (n, d) any dtype/device, integer ``labels`` and ``groups``."""
        if hidden.ndim != 2:
            raise InputError(f"hidden states must be (n, d), got shape {tuple(hidden.shape)}")
        x = hidden.detach().to(torch.float64)
        m, K, d = len(self.groups), len(self.classes), x.shape[1]
        code = groups.to(x.device).long() * K + labels.to(x.device).long()
        if code.numel() != x.shape[0]:
            raise InputError("labels and groups need one entry per row of hidden")
        if code.numel() and (code.min() < 0 or code.max() >= m * K):
            raise InputError("label or group code out of range")
        counts = torch.bincount(code, minlength=m * K).to(torch.float64)
        sums = torch.zeros(m * K, d, dtype=torch.float64, device=x.device)
        sums.index_add_(0, code, x)
        means = sums / counts.clamp(min=1.0)[:, None]
        centred = x - means[code]
        scatters = torch.zeros(m * K, d, d, dtype=torch.float64, device=x.device)
        for c in torch.unique(code).tolist():
            rows = centred[code == c]
            scatters[c] = rows.T @ rows
        batch = CellStats(
            self.groups,
            self.classes,
            counts.cpu().numpy().reshape(m, K),
            means.cpu().numpy().reshape(m, K, d),
            scatters.cpu().numpy().reshape(m, K, d, d),
        )
        self._stats = batch if self._stats is None else self._stats.merge(batch)

    @property
    def stats(self) -> CellStats:
        if self._stats is None:
            raise InputError("no batch was added; call update first")
        return self._stats


class SteeringModule(torch.nn.Module):
    """Per-cell OT steering maps as a torch module.

    ``forward(x, groups, labels=None, mode="soft")``: with labels, each row
    goes through its cell's map; without, ``mode`` is ``soft`` (posterior-
    weighted under the fitted model), ``hard`` (most probable class) or
    ``none``. Normal-family models only (representations are not positive).
    """

    def __init__(self, maps: SteeringMaps) -> None:
        super().__init__()
        if not maps.original.family.is_identity:
            raise InputError("SteeringModule supports normal-family models only")
        orig = maps.original
        L = np.linalg.cholesky(orig.covariances)
        L_inv = np.linalg.inv(L)
        logdet = 2.0 * np.log(np.diagonal(L, axis1=-2, axis2=-1)).sum(axis=-1)
        const = np.log(orig.priors) - 0.5 * (logdet + orig.n_features * math.log(2 * math.pi))
        for name, value in (
            ("mu", orig.means),
            ("mu_ideal", maps.ideal.means),
            ("A", np.array(maps.A)),
            ("L_inv", L_inv),
            ("log_const", const),
        ):
            self.register_buffer(name, torch.as_tensor(np.array(value), dtype=torch.float64))

    def _per_group(self, x: torch.Tensor, groups: torch.Tensor, fn: Callable) -> torch.Tensor:
        """Apply ``fn(a, diff)`` to each group's rows, diff = x - mu[a] of shape (r, K, d).

        One group at a time: gathering a (d, d) matrix per row and class would
        need n K d^2 memory (GBs for a batch of 384-dim representations).
        """
        out = None
        for a in torch.unique(groups).tolist():
            rows = groups == a
            value = fn(a, x[rows][:, None, :] - self.mu[a])
            if out is None:
                out = x.new_empty((x.shape[0], *value.shape[1:]))
            out[rows] = value
        if out is None:
            raise InputError("empty batch")  # forward returns empty batches unchanged
        return out

    def _cell_maps(self, x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """Images of every row under every class map of its group: (n, K, d)."""
        return self._per_group(
            x,
            groups,
            lambda a, diff: self.mu_ideal[a] + torch.einsum("kde,rke->rkd", self.A[a], diff),
        )

    def log_joint(self, x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """log P(x, Y=i | A=a) + log P(A=a) per row and class: (n, K)."""

        def fn(a: int, diff: torch.Tensor) -> torch.Tensor:
            white = torch.einsum("kde,rke->rkd", self.L_inv[a], diff)
            return self.log_const[a] - 0.5 * (white**2).sum(-1)

        return self._per_group(x, groups, fn)

    def forward(
        self,
        x: torch.Tensor,
        groups: torch.Tensor,
        labels: torch.Tensor | None = None,
        mode: str = "soft",
    ) -> torch.Tensor:
        if mode not in UNLABELED_MODES:
            raise InputError(f"mode must be one of {UNLABELED_MODES}, got {mode!r}")
        dtype = x.dtype
        z = x.to(torch.float64)
        groups = groups.to(z.device).long()
        if (labels is None and mode == "none") or x.shape[0] == 0:
            return x
        images = self._cell_maps(z, groups)
        if labels is None and mode == "soft":
            post = torch.softmax(self.log_joint(z, groups), dim=1)
            return (post[..., None] * images).sum(1).to(dtype)
        if labels is None:
            labels = self.log_joint(z, groups).argmax(dim=1)
        idx = labels.to(z.device).long()
        return images[torch.arange(z.shape[0], device=z.device), idx].to(dtype)


@contextlib.contextmanager
def steer_layer(
    layer: torch.nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[Any]:
    """Replace ``layer``'s output ``h`` (or ``h[0]`` of a tuple) by ``fn(h)`` inside the block.

    The hook is removed on exit, also when the block raises.
    """

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (fn(output[0]), *output[1:])
        if hasattr(output, "last_hidden_state"):
            output.last_hidden_state = fn(output.last_hidden_state)
            return output
        return fn(output)

    # prepend: run before hooks the model registered itself (transformers records
    # hidden_states with forward hooks), so they see the steered output
    handle = layer.register_forward_hook(hook, prepend=True)
    try:
        yield handle
    finally:
        handle.remove()
