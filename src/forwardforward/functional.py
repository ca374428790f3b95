"""Softplus family (placeholder: replaced by the full, tested module)."""

import torch.nn.functional as F


def ff_loss(goodness_pos, goodness_neg, threshold, *, kind="softplus", alpha=4.0,
            reduction="mean"):
    """Forward-Forward layer loss: zeta(-(g+ - theta)) and zeta(g- - theta)."""
    if kind == "symba":
        loss = F.softplus(-alpha * (goodness_pos - goodness_neg), threshold=1e9)
        return loss.mean() if reduction == "mean" else loss
    lp = F.softplus(-(goodness_pos - threshold))
    ln = F.softplus(goodness_neg - threshold)
    if reduction == "none":
        return lp, ln
    if reduction == "sum":
        return lp.sum() + ln.sum()
    return (lp.sum() + ln.sum()) / (lp.numel() + ln.numel())
