"""Projections from the full dense vector to a truncated dense field.

``prefix``: the first ``dim`` components, renormalised (Matryoshka-style; BGE-M3 was not trained for
it, so it costs quality). ``pca``: a rotation fitted on a sample of the corpus that puts the variance
first, then renormalised. Documents and queries go through the same projection, so inner products in
the truncated field stay comparable.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgument


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def prefix_project(dense: np.ndarray, dim: int) -> np.ndarray:
    """First ``dim`` components of each row, renormalised (equals the encoder's truncated output)."""
    x = np.asarray(dense, dtype=np.float32)
    if x.shape[-1] < dim:
        raise InvalidArgument(f"cannot truncate {x.shape[-1]}-d vectors to {dim} dims")
    return _normalise(x[..., :dim])


@dataclass(frozen=True)
class PcaProjection:
    """``project(x) = normalise((x - mean) @ components.T)``; components are [dim, hidden], orthonormal rows."""

    mean: np.ndarray  # float32 [hidden]
    components: np.ndarray  # float32 [dim, hidden]
    explained_variance_ratio: float = 0.0  # share of the sample's variance the kept components hold

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def hidden(self) -> int:
        return int(self.components.shape[1])

    def project(self, dense: np.ndarray) -> np.ndarray:
        x = np.asarray(dense, dtype=np.float32)
        if x.shape[-1] != self.hidden:
            raise InvalidArgument(f"PCA projection expects {self.hidden}-d vectors, got {x.shape[-1]}-d")
        return _normalise((x - self.mean) @ self.components.T)

    def to_bytes(self) -> bytes:
        """Little-endian float32: header [dim, hidden, evr] then mean then components."""
        header = np.array([self.dim, self.hidden], dtype="<i4").tobytes()
        evr = np.array([self.explained_variance_ratio], dtype="<f4").tobytes()
        return header + evr + self.mean.astype("<f4").tobytes() + self.components.astype("<f4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> PcaProjection:
        dim, hidden = (int(v) for v in np.frombuffer(data[:8], dtype="<i4"))
        evr = float(np.frombuffer(data[8:12], dtype="<f4")[0])
        body = np.frombuffer(data[12:], dtype="<f4")
        if body.size != hidden * (dim + 1):
            raise ValueError(f"PCA blob holds {body.size} floats, expected {hidden * (dim + 1)}")
        mean = body[:hidden].astype(np.float32)
        comps = body[hidden:].reshape(dim, hidden).astype(np.float32)
        return cls(mean=mean, components=comps, explained_variance_ratio=evr)

    def to_base64(self) -> str:
        return base64.b64encode(self.to_bytes()).decode("ascii")

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()[:16]


def fit_pca(dense_sample: np.ndarray, dim: int) -> PcaProjection:
    """Fit a PCA rotation keeping ``dim`` components on a [n, hidden] sample of corpus dense vectors.

    Needs at least ``dim`` rows (more is better: a few thousand passages for dim 256). The sign of
    each component is fixed (largest-magnitude loading positive) so refits on the same data agree.
    """
    x = np.asarray(dense_sample, dtype=np.float64)
    if x.ndim != 2:
        raise InvalidArgument(f"PCA sample must be a 2-d [n, hidden] matrix, got shape {x.shape}")
    n, hidden = x.shape
    if not 0 < dim <= hidden:
        raise InvalidArgument(f"PCA dim must be between 1 and {hidden}, got {dim}")
    if n < dim:
        raise InvalidArgument(f"PCA to {dim} dims needs at least {dim} sample vectors, got {n}")
    if not np.all(np.isfinite(x)):
        raise InvalidArgument("PCA sample contains NaN or infinite values")
    mean = x.mean(axis=0)
    centred = x - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    comps = vt[:dim]
    signs = np.sign(comps[np.arange(dim), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    var = s**2
    total = float(var.sum())
    evr = float(var[:dim].sum() / total) if total > 0 else 0.0
    return PcaProjection(mean=mean.astype(np.float32), components=comps.astype(np.float32),
                         explained_variance_ratio=evr)
