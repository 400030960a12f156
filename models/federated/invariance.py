"""Site-invariant training and how well the site can still be read from the model.

A site classifier sits behind a gradient-reversal layer on the representation ``fused``
(:func:`models.federated.training.train_epochs`); its strength is a setting. The
measure of site predictability is a **fresh** probe, not the adversary: a multinomial
logistic regression fitted on the validation stays' representation at 48 h and scored
one-vs-rest (AUROC per site, then the mean) on the test stays.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from streams.core.risk_metrics import auroc

__all__ = ["site_probe_auroc"]


def site_probe_auroc(
    train_features: npt.NDArray[np.float64],
    train_sites: npt.NDArray[np.int64],
    test_features: npt.NDArray[np.float64],
    test_sites: npt.NDArray[np.int64],
    n_sites: int,
    l2: float = 1e-3,
) -> dict[str, float]:
    """One-vs-rest AUROC of a softmax regression probe, per site index and their mean.

    Args:
        train_features: ``[N, F]`` representations the probe is fitted on.
        train_sites: ``[N]`` site index ``0..n_sites-1``.
        test_features: ``[M, F]`` representations it is scored on.
        test_sites: ``[M]``.
        n_sites: Number of sites.
        l2: Ridge penalty on the weights.
    """
    mean = train_features.mean(0)
    std = train_features.std(0) + 1e-6
    x = torch.from_numpy((train_features - mean) / std)
    y = torch.from_numpy(train_sites)
    torch.manual_seed(0)
    w = torch.zeros(x.shape[1], n_sites, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_sites, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + l2 * (w**2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimiser.step(closure)  # type: ignore[no-untyped-call]
    with torch.no_grad():
        scores = torch.softmax(torch.from_numpy((test_features - mean) / std) @ w + b, 1).numpy()
    per_site = {
        str(k): auroc((test_sites == k).astype(np.float64), scores[:, k])
        for k in range(n_sites)
        if 0 < (test_sites == k).sum() < test_sites.size
    }
    return {"per_site": per_site, "mean": float(np.mean(list(per_site.values())))}  # type: ignore[dict-item]
