"""The Forward-Forward training loop.

Every mini-batch of images gives positive data (each image with its true label written
in) and negative data (the same image with a wrong label); in unsupervised mode the
positives are the bare images and the negatives hybrids of two images
(:func:`~forwardforward.negatives.hybrid_images`). Each layer takes a step on its
own loss :func:`~forwardforward.functional.ff_loss` of its positive and negative goodness,
then passes its detached activities on. ``simultaneous`` updates every layer on every
mini-batch; ``sequential`` trains layer 1 for all its epochs, then layer 2, and so on.

The data stays on the device as one tensor; the hot path makes no per-sample Python calls
and synchronizes with the host once per log interval.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from forwardforward import distributed as dist
from forwardforward.config import RunConfig
from forwardforward.errors import ConfigError, TrainingError
from forwardforward.functional import ff_loss
from forwardforward.model import (
    FFNet,
    Readout,
    goodness,
    overlay_labels,
    rescale,
    wrong_labels,
)
from forwardforward.negatives import hybrid_images, sample_wrong_labels

log = logging.getLogger(__name__)

LOG_EVERY = 50  # steps between host syncs (progress bar, divergence check)
EVAL_BATCH = 1000  # images per evaluation chunk


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an unavailable CUDA device is a ConfigError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is available; use cpu")
    if name == "cuda" and dist.world_size() > 1:
        return dist.cuda_device()  # one GPU per rank of this machine
    device = torch.device(name)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} asked for, but this machine has "
                          f"{torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    return device


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 matrix products run natively: AVX512-BF16 or AMX on CPU, sm80+ on CUDA."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    mkldnn = torch.backends.mkldnn.is_available()
    return bool(mkldnn and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 where bf16 matrix products are native, else float32."""
    if name == "auto":
        return torch.bfloat16 if bf16_is_fast(device) else torch.float32
    return torch.bfloat16 if name == "bf16" else torch.float32


def lr_factor(kind: str, progress: float) -> float:
    """Multiplier of the learning rate at ``progress`` in [0, 1) of a layer's training."""
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "linear":
        return 1.0 - progress
    return 1.0


_flush_depth = 0


@contextlib.contextmanager
def flush_denormals():
    """Flush denormal floats to zero inside the block, as they were outside it.

    NOTE: late in training, denormal activities and gradients slow CPU matrix products
    several-fold; flushing them changes nothing measurable at these magnitudes. Training
    and prediction both run inside, so evaluation reproduces training's errors.
    """
    global _flush_depth
    _flush_depth += 1
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        _flush_depth -= 1
        if _flush_depth == 0:
            torch.set_flush_denormal(False)


@dataclass
class EpochResult:
    """What one epoch measured; per-layer lists are indexed by layer."""

    epoch: int
    loss: list[float]
    goodness_pos: list[float]
    goodness_neg: list[float]
    train_error: float | None
    test_error: float | None
    seconds: float
    samples_per_second: float
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """A flat row for ``metrics.csv``."""
        out: dict[str, Any] = {"epoch": self.epoch}
        per_layer = zip(self.loss, self.goodness_pos, self.goodness_neg, strict=True)
        for i, (lo, gp, gn) in enumerate(per_layer):
            out |= {f"loss_{i + 1}": lo, f"g_pos_{i + 1}": gp, f"g_neg_{i + 1}": gn}
        out |= {
            "train_error": self.train_error,
            "test_error": self.test_error,
            "seconds": self.seconds,
            "samples_per_second": self.samples_per_second,
        }
        return out | self.extra


class Trainer:
    """Trains an :class:`FFNet` (and, for softmax prediction, its :class:`Readout`).

    Args:
        config: the resolved run configuration.
        in_features: input width ``D``.
        num_classes: number of labels ``C``.
        image_shape: ``(H, W)`` of one image, ``H * W = D``; needed in unsupervised mode,
            whose hybrid negatives are masked in two dimensions.
    """

    def __init__(
        self,
        config: RunConfig,
        in_features: int,
        num_classes: int = 10,
        image_shape: tuple[int, int] | None = None,
    ) -> None:
        self.config = config
        tc = config.train
        self.device = resolve_device(tc.device)
        self.dtype = resolve_precision(tc.precision, self.device)
        self.num_classes = num_classes
        self.image_shape = image_shape
        if config.model.mode == "unsupervised" and (
            image_shape is None or image_shape[0] * image_shape[1] != in_features
        ):
            raise ConfigError(
                f"unsupervised mode needs the image shape (H, W) with H * W = {in_features} "
                f"to mask hybrid negatives; got {image_shape}"
            )

        torch.manual_seed(tc.seed)
        self.net = FFNet(in_features, config.model, num_classes).to(self.device)
        self.readout = Readout(self.net).to(self.device)
        fused = {"fused": True} if self.device.type in ("cpu", "cuda") else {}
        self.optimizers = [
            torch.optim.AdamW(
                layer.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, **fused
            )
            for layer in self.net.layers
        ]
        self.readout_opt = torch.optim.AdamW(self.readout.parameters(), lr=tc.readout_lr)
        self.generator = torch.Generator(self.device).manual_seed(tc.seed)
        self.epoch = 0  # epochs finished
        # NOTE: every replica draws the same permutation and negatives for the whole batch
        # from its own copy of the generator, then trains on its rows only.
        data_parallel = tc.parallel == "data"
        self.replicas = dist.Replicas.current() if data_parallel else dist.Replicas()
        # the hand-written gradient covers every loss, goodness and precision; the peer
        # penalty has no closed form here and takes autograd
        fast = config.model.peer_norm == 0
        self.step_fn = self._fast_layer_step if fast else self._layer_step
        if tc.compile:
            self.step_fn = torch.compile(self.step_fn, dynamic=False)

    # ----------------------------------------------------------------- schedule
    @property
    def total_epochs(self) -> int:
        """Epochs of the whole run: per layer when sequential."""
        tc = self.config.train
        return tc.epochs * (len(self.net.layers) if tc.schedule == "sequential" else 1)

    def active_layers(self, epoch: int) -> range:
        """Indices of the layers trained in ``epoch`` (0-based)."""
        if self.config.train.schedule == "sequential":
            k = epoch // self.config.train.epochs
            return range(k, k + 1)
        return range(len(self.net.layers))

    def _set_lr(self, epoch: int, step: int, steps: int) -> None:
        tc = self.config.train
        per_layer = tc.epochs
        local = epoch % per_layer if tc.schedule == "sequential" else epoch
        factor = lr_factor(tc.lr_schedule, (local + step / steps) / per_layer)
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = tc.lr * factor
        for group in self.readout_opt.param_groups:
            group["lr"] = tc.readout_lr * factor

    # ----------------------------------------------------------------- steps
    def _autocast(self):
        enabled = self.dtype != torch.float32
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled)

    def _layer_step(self, i: int, h: Tensor, B: int) -> tuple[Tensor, Tensor]:
        """One optimizer step of layer ``i`` on ``h`` = positives over negatives ``(2B, D)``.

        Returns the layer's detached output ``(2B, H)`` and its stats ``(3,)``: loss,
        mean positive goodness, mean negative goodness.
        """
        layer, opt, mc = self.net.layers[i], self.optimizers[i], self.config.model
        with self._autocast():
            out = layer(h)  # (2B, H)
        g = goodness(out, mc.goodness)  # (2B,) float32
        loss = ff_loss(g[:B], g[B:], self.net.thetas[i], kind=mc.loss, alpha=mc.alpha)
        total = loss
        if self.net.peer is not None:
            # Limitation: a data-parallel replica's running mean follows its own rows only
            total = loss + mc.peer_norm * self.net.peer[i](out[:B])  # positives only

        opt.zero_grad(set_to_none=True)
        total.backward()
        self.replicas.average_gradients(layer.parameters(), weight=B)
        opt.step()

        stats = torch.stack([loss.detach(), g[:B].mean().detach(), g[B:].mean().detach()])
        return out.detach(), stats

    @torch.no_grad()
    def _fast_layer_step(self, i: int, h: Tensor, B: int) -> tuple[Tensor, Tensor]:
        """:meth:`_layer_step` with the layer's gradient written out, no autograd graph.

        With :math:`\\hat x` the rescaled input and :math:`h = \\operatorname{relu}(W\\hat x + b)`,
        the chain rule through :math:`g = \\sum_j h_j^2` (or its mean) gives

        .. math::

            \frac{\\partial L}{\\partial W} = (2 c \\odot h)^\top \\hat x, \\qquad
            \frac{\\partial L}{\\partial b} = \textstyle\\sum_n 2 c_n h_n,
            \\qquad c = \frac{\\partial L}{\\partial g},

        where ReLU's mask is implied since :math:`h = 0` wherever it is closed. ``c`` comes
        from autograd through :func:`ff_loss` on the ``(2B,)`` goodness alone, so every loss
        kind is exact; the matrix products run in the training precision like autocast's.
        """
        layer, opt, mc = self.net.layers[i], self.optimizers[i], self.config.model
        W, b = layer.linear.weight, layer.linear.bias
        dt = W.dtype if self.dtype == torch.float32 else self.dtype  # as autocast would
        H = W.shape[0]

        x = rescale(h, layer.unit_norm).to(dt)  # (2B, D)
        out = torch.addmm(b.to(dt), x, W.to(dt).t()).relu_()  # (2B, H)
        acc = torch.promote_types(out.dtype, torch.float32)  # float32 at least
        sq = torch.linalg.vector_norm(out, dim=1, dtype=acc).square()  # (2B,)
        g = (sq / H if mc.goodness == "mean" else sq).requires_grad_()

        with torch.enable_grad():
            loss = ff_loss(g[:B], g[B:], self.net.thetas[i], kind=mc.loss, alpha=mc.alpha)
            (c,) = torch.autograd.grad(loss, g)  # (2B,)
        scale = 2 * c / H if mc.goodness == "mean" else 2 * c
        d_out = out * scale[:, None].to(dt)  # (2B, H) = dL/d(pre-activation)

        W.grad = (d_out.t() @ x).to(W.dtype)  # (H, D)
        b.grad = d_out.sum(dim=0, dtype=b.dtype)  # (H,)
        self.replicas.average_gradients(layer.parameters(), weight=B)
        opt.step()

        stats = torch.stack([loss.detach(), g[:B].mean(), g[B:].mean()])
        return out, stats

    def negative_labels(self, x: Tensor, y: Tensor) -> Tensor:
        """Wrong labels for the negatives of a batch: uniform, or sampled from the model.

        Hard negatives follow the model's own probabilities of the wrong labels: the
        softmax of the read-out's logits when it predicts, else of the summed goodness of
        each label (:func:`~forwardforward.negatives.sample_wrong_labels`). Data-parallel
        replicas each score their rows and all draw from the gathered scores of the batch.
        """
        if self.config.train.negatives == "hard":
            with torch.no_grad():
                logits = self.class_logits(self.replicas.shard(x))  # (B_k, C)
            logits = self.replicas.gather_rows(logits, x.shape[0])  # (B, C)
            # NOTE: a diverged net scores NaN, on which multinomial raises; sampling uniformly
            # instead lets the loss check report the divergence with its epoch and layer
            logits = torch.nan_to_num(logits, nan=0.0)
            return sample_wrong_labels(logits, y, generator=self.generator)
        return wrong_labels(y, self.num_classes, self.generator)

    def class_logits(self, x: Tensor) -> Tensor:
        """The model's class scores ``(B, C)`` (float32), by the configured prediction."""
        with self._autocast():
            if self.config.train.predict == "softmax":
                return self.readout(self.readout.features(self.net, x)).float()
            return self.net.label_scores(x).float()

    def positives_negatives(self, x: Tensor, y: Tensor) -> Tensor:
        """Positive over negative inputs ``(2B, D)`` for a batch of images ``(B, D)``.

        Supervised: the true label, then a wrong one, written into each image.
        Unsupervised: the bare images, then hybrids of pairs of them.
        """
        if not self.net.supervised:
            blurs = self.config.train.mask_blurs
            x_neg = hybrid_images(x, self.image_shape, blurs, generator=self.generator)
            return torch.cat([x, x_neg])

        C, value = self.num_classes, self.config.model.label_value
        y_neg = self.negative_labels(x, y)
        return torch.cat([overlay_labels(x, y, C, value), overlay_labels(x, y_neg, C, value)])

    def train_step(self, x: Tensor, y: Tensor, layers: range) -> Tensor:
        """Update ``layers`` on one mini-batch; returns stats ``(L, 3)`` (zeros elsewhere).

        With data-parallel replicas, ``x`` and ``y`` are the whole batch; this replica
        trains on its rows and its stats are means over them.
        """
        B = x.shape[0]
        h = self.positives_negatives(x, y)  # (2B, D), the same on every replica
        if self.replicas.size > 1:  # keep this replica's rows of positives and negatives
            h = torch.cat([self.replicas.shard(h[:B]), self.replicas.shard(h[B:])])  # (2B_k, D)
            x, y = self.replicas.shard(x), self.replicas.shard(y)
            B = x.shape[0]

        stats = torch.zeros(len(self.net.layers), 3, device=self.device)
        with torch.no_grad(), self._autocast():
            for i in range(layers.start):  # frozen layers below the trained block
                h = self.net.layers[i](h)
        for i in layers:
            h, stats[i] = self.step_fn(i, h, B)

        if self.config.train.predict == "softmax":
            self._readout_step(x, y)
        return stats

    def _readout_step(self, x: Tensor, y: Tensor) -> None:
        with self._autocast():
            features = self.readout.features(self.net, x)
        loss = F.cross_entropy(self.readout(features), y)
        self.readout_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.replicas.average_gradients(self.readout.parameters(), weight=x.shape[0])
        self.readout_opt.step()

    # ----------------------------------------------------------------- epochs
    def train_epoch(self, x: Tensor, y: Tensor, progress: bool = True) -> tuple[Tensor, float]:
        """One pass over ``(x, y)`` in shuffled mini-batches.

        Returns the mean stats per layer ``(L, 3)`` and the seconds taken.
        """
        N = x.shape[0]
        B = self.config.train.batch_size
        steps = max(1, N // B) if N >= B else 1
        layers = self.active_layers(self.epoch)
        if min(N, B) < self.replicas.size:
            raise ConfigError(
                f"{self.replicas.size} data-parallel ranks need a batch of at least as many "
                f"examples, got {min(N, B)}; raise --batch-size or start fewer ranks"
            )
        perm = torch.randperm(N, device=self.device, generator=self.generator)
        total = torch.zeros(len(self.net.layers), 3, device=self.device)

        start = time.perf_counter()
        bar = tqdm(range(steps), desc=f"epoch {self.epoch + 1}/{self.total_epochs}",
                   disable=not progress, leave=False, unit="batch")
        for s in bar:
            self._set_lr(self.epoch, s, steps)
            idx = perm[s * B : (s + 1) * B]
            share = self.replicas.share(idx.shape[0])  # this replica's fraction of the batch
            total += self.train_step(x[idx], y[idx], layers) * share
            if (s + 1) % LOG_EVERY == 0 or s + 1 == steps:
                mean = (self.replicas.sum(total) / (s + 1)).tolist()  # the interval's host sync
                self._check_finite(mean, layers)
                rate = (s + 1) * B / (time.perf_counter() - start)
                if progress:
                    bar.set_postfix_str(_postfix(mean, layers, rate))
        total = self.replicas.sum(total)
        seconds = time.perf_counter() - start
        return total / steps, seconds

    def _check_finite(self, mean: list[list[float]], layers: range) -> None:
        for i in layers:
            if not all(math.isfinite(v) for v in mean[i]):
                raise TrainingError(
                    f"non-finite loss or goodness in epoch {self.epoch + 1}, layer {i + 1}"
                )

    @torch.no_grad()
    def _check_weights(self) -> None:
        """Refuse to finish an epoch whose weights are non-finite (one host sync)."""
        parts = [(f"layer {i + 1}", layer) for i, layer in enumerate(self.net.layers)]
        parts.append(("the softmax read-out", self.readout))
        finite = torch.stack(
            [torch.stack([p.isfinite().all() for p in m.parameters()]).all() for _, m in parts]
        ).tolist()  # (L + 1,)
        for (name, _), ok in zip(parts, finite, strict=True):
            if not ok:
                raise TrainingError(f"non-finite weights in epoch {self.epoch + 1}, {name}")

    @torch.no_grad()
    def predictions(self, x: Tensor) -> Tensor:
        """Predicted labels ``(N,)`` for images ``(N, D)``, in chunks of EVAL_BATCH."""
        with flush_denormals():
            chunks = [self.predict(x[s : s + EVAL_BATCH]) for s in range(0, len(x), EVAL_BATCH)]
        return torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.long)

    def error(self, x: Tensor, y: Tensor) -> float:
        """Fraction of ``x`` misclassified by the configured prediction method.

        Data-parallel replicas each predict their rows and add up the mistakes.
        """
        rows = self.replicas.rows(x.shape[0])
        wrong = (self.predictions(x[rows]) != y[rows]).sum()
        return self.replicas.sum(wrong).item() / max(1, x.shape[0])

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Predicted labels ``(B,)`` for images ``(B, D)``."""
        with self._autocast():
            if self.config.train.predict == "softmax":
                return self.readout(self.readout.features(self.net, x)).argmax(dim=1)
            return self.net.label_scores(x).argmax(dim=1)

    def fit(
        self,
        data: dict[str, Tensor],
        callback: Callable[[EpochResult], None] | None = None,
        progress: bool = True,
    ) -> list[EpochResult]:
        """Train from the current epoch to the last; ``callback`` sees each epoch's result.

        Args:
            data: ``x_train``, ``y_train``, ``x_test``, ``y_test`` and the fixed training
                subset ``x_train_eval``, ``y_train_eval``, all on the device.
        """
        with flush_denormals():
            return self._fit(data, callback, progress)

    def _fit(self, data, callback, progress) -> list[EpochResult]:
        results = []
        while self.epoch < self.total_epochs:
            stats, seconds = self.train_epoch(data["x_train"], data["y_train"], progress)
            self._check_weights()
            self.epoch += 1
            tc = self.config.train
            last = self.epoch == self.total_epochs
            evaluate = last or self.epoch % tc.eval_every == 0
            start = time.perf_counter()
            train_error = test_error = None
            if evaluate:
                train_error = self.error(data["x_train_eval"], data["y_train_eval"])
                test_error = self.error(data["x_test"], data["y_test"])
            mean = stats.tolist()
            result = EpochResult(
                epoch=self.epoch,
                loss=[m[0] for m in mean],
                goodness_pos=[m[1] for m in mean],
                goodness_neg=[m[2] for m in mean],
                train_error=train_error,
                test_error=test_error,
                seconds=seconds,
                samples_per_second=data["x_train"].shape[0] / seconds,
                extra={"eval_seconds": time.perf_counter() - start},
            )
            log.info(_summary(result))
            results.append(result)
            if callback is not None:
                callback(result)
        return results

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "readout": self.readout.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "readout_opt": self.readout_opt.state_dict(),
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.readout.load_state_dict(state["readout"])
        for opt, s in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)
        self.readout_opt.load_state_dict(state["readout_opt"])
        self.generator.set_state(state["generator"])
        self.epoch = int(state["epoch"])


def _postfix(mean: list[list[float]], layers: range, rate: float) -> str:
    gaps = " ".join(f"{mean[i][1] - mean[i][2]:.3g}" for i in layers)
    loss = sum(mean[i][0] for i in layers) / len(layers)
    return f"loss {loss:.4f} gap {gaps} {rate:,.0f} samples/s"


def _summary(r: EpochResult) -> str:
    err = "" if r.test_error is None else (
        f" train error {100 * r.train_error:.2f}% test error {100 * r.test_error:.2f}%"
    )
    loss = " ".join(f"{v:.4f}" for v in r.loss)
    return f"epoch {r.epoch}: loss {loss}{err} ({r.seconds:.1f}s, {r.samples_per_second:,.0f}/s)"
