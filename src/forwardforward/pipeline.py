"""Layer-pipelined Forward-Forward training: each rank trains a block of layers.

A Forward-Forward layer learns from its own loss on its detached input; no gradient
crosses a layer boundary, so the layers can learn at the same time on different
mini-batches. With ``W`` ranks the ``L`` layers are cut into ``W`` contiguous blocks of
about equal cost (:func:`split_layers`), and in step ``t`` rank ``r`` trains its block on
mini-batch ``t - r``::

    step        0    1    2   ...  S-1   S
    rank 0     b0   b1   b2   ...  bS-1
    rank 1          b0   b1   ...  bS-2  bS-1

Rank 0 owns the data: for each mini-batch it writes the true labels (positives) and
drawn wrong labels (negatives) into the images, trains its layers on the ``(2B, D)``
stack and sends the activities of its last layer to rank 1 without waiting; rank ``r``
receives them, trains its block and passes its own on. The pipeline fills in the first
``W - 1`` steps of an epoch and drains in its last ``W - 1``; the epoch's time counts both.

A layer's input on a mini-batch is the output of the layer below on that mini-batch,
computed before that layer's update, exactly as in one process's simultaneous loop; so
pipelining changes where the arithmetic runs, not its result.

Prediction sends the images with every label written in down the same pipeline; each
rank sums the goodness of its scored layers, and one reduction adds the ranks' partial
scores on rank 0. A checkpoint gathers every block to rank 0, which writes the usual
full model, so ``forwardforward evaluate`` reads a pipelined run in one process.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque

import torch
import torch.distributed as td
from torch import Tensor
from tqdm.auto import tqdm

from forwardforward import distributed as dist
from forwardforward.config import RunConfig
from forwardforward.errors import ConfigError
from forwardforward.model import goodness
from forwardforward.train import EVAL_BATCH, LOG_EVERY, Trainer, _postfix, flush_denormals

log = logging.getLogger(__name__)

IN_FLIGHT = 2  # sends a rank may have started and not yet seen finish
Pending = deque[tuple[td.Work, Tensor]]  # open sends and the tensors they read


def check_pipeline(config: RunConfig, ranks: int) -> None:
    """Refuse settings that need the whole net on one rank, or more ranks than layers.

    Raises:
        ConfigError: naming the setting and what to use instead.
    """
    tc, layers = config.train, len(config.model.layers)
    if ranks > layers:
        raise ConfigError(
            f"--parallel pipeline gives each rank at least one layer: {ranks} ranks for "
            f"{layers} layers; start at most {layers} ranks or use --parallel data"
        )
    # Limitation: these three need every layer's activities on one rank at every step;
    # they would need a second pass down the pipeline, which is not built.
    if config.model.mode != "supervised":
        raise ConfigError("unsupervised mode predicts with the softmax read-out, which reads "
                          "every layer at once and no rank of a pipeline holds; use "
                          "--parallel data")
    if tc.schedule != "simultaneous":
        raise ConfigError("--parallel pipeline trains all layers at once; use "
                          "--schedule simultaneous, or --parallel data")
    if tc.negatives != "random":
        raise ConfigError("--negatives hard scores every label with the whole net, which no "
                          "rank of a pipeline holds; use --negatives random or --parallel data")
    if tc.predict != "goodness":
        raise ConfigError("--predict softmax reads every layer at once, which no rank of a "
                          "pipeline holds; use --predict goodness or --parallel data")


def split_layers(costs: list[float], parts: int) -> list[range]:
    """Cut layers into ``parts`` contiguous non-empty blocks whose largest cost is least.

    .. math:: \\min_{0 = c_0 < c_1 < \\dots < c_W = L} \\; \\max_r \\sum_{l = c_r}^{c_{r+1} - 1}
        \\text{cost}_l

    A pipeline runs at the pace of its slowest stage, so this is the split of highest
    throughput. Computed by dynamic programming over (layers used, blocks made) in
    :math:`O(L^2 W)`.

    Args:
        costs: the cost of each layer (multiply-adds per example), length ``L >= parts``.
        parts: the number of blocks ``W``.

    Returns:
        ``W`` ranges of layer indices, in order, covering ``0..L-1``.
    """
    L = len(costs)
    if not 1 <= parts <= L:
        raise ValueError(f"cannot cut {L} layers into {parts} non-empty blocks")
    prefix = [0.0, *itertools.accumulate(costs)]

    # best[w][l]: least largest block cost of the first l layers in w blocks
    best = [[math.inf] * (L + 1) for _ in range(parts + 1)]
    cut = [[0] * (L + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for w in range(1, parts + 1):
        for end in range(w, L + 1):
            for start in range(w - 1, end):
                value = max(best[w - 1][start], prefix[end] - prefix[start])
                if value < best[w][end]:
                    best[w][end], cut[w][end] = value, start

    blocks, end = [], L
    for w in range(parts, 0, -1):
        blocks.append(range(cut[w][end], end))
        end = cut[w][end]
    return blocks[::-1]


def layer_costs(in_features: int, widths: tuple[int, ...]) -> list[float]:
    """Multiply-adds per example of each layer: its input width times its output width."""
    ins = (in_features, *widths[:-1])
    return [float(a * b) for a, b in zip(ins, widths, strict=True)]


def share_data(tensors: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """Rank 0's data; on the other ranks, tensors on the meta device of the same shapes.

    Only rank 0 reads the data; the others need its shapes to know the steps of an epoch.
    """
    meta = {k: t.to("meta") for k, t in tensors.items()} if dist.is_main() else None
    meta = dist.broadcast_object(meta)
    return tensors if dist.is_main() else meta


class PipelineTrainer(Trainer):
    """A :class:`~forwardforward.train.Trainer` whose layers are split across the ranks.

    Every rank builds the whole net from the same seed (so the initial weights are those
    of one process) and trains only its block; rank 0 alone draws the permutation and
    the wrong labels, and alone needs the data (the others are given meta tensors).

    Args:
        config: the resolved run configuration (checked by :func:`check_pipeline`).
        in_features: input width ``D``.
        num_classes: number of labels ``C``.
    """

    def __init__(
        self,
        config: RunConfig,
        in_features: int,
        num_classes: int = 10,
        image_shape: tuple[int, int] | None = None,
    ) -> None:
        check_pipeline(config, dist.world_size())
        super().__init__(config, in_features, num_classes, image_shape)
        self.rank, self.ranks = dist.rank(), dist.world_size()
        costs = layer_costs(in_features, config.model.layers)
        self.blocks = split_layers(costs, self.ranks)
        self.block = self.blocks[self.rank]
        self.widths = (in_features, *config.model.layers)
        names = [f"{b.start + 1}" + (f"-{b.stop}" if len(b) > 1 else "") for b in self.blocks]
        log.info("pipeline: layers %s on ranks 0..%d", " | ".join(names), self.ranks - 1)

    # ----------------------------------------------------------------- messages
    @property
    def first(self) -> bool:
        return self.rank == 0

    @property
    def last(self) -> bool:
        return self.rank == self.ranks - 1

    def _receive(self, rows: int) -> Tensor:
        """The activities ``(rows, D_r)`` of the previous rank's last layer."""
        width = self.widths[self.block.start]
        return dist.recv((rows, width), self.dtype, self.device, self.rank - 1)

    def _pass_on(self, h: Tensor, pending: Pending) -> None:
        """Send ``h`` to the next rank without waiting, keeping ``IN_FLIGHT`` sends open."""
        if self.last:
            return
        # Limitation: on NCCL the tensor must outlive the send on its stream; holding it
        # until wait() is what the documentation asks, untested here for want of a GPU.
        if len(pending) == IN_FLIGHT:
            dist.wait(pending.popleft()[0])
        h = h.to(self.dtype).contiguous()  # the dtype the next rank receives
        pending.append((dist.send(h, self.rank + 1), h))  # h stays alive until sent

    @staticmethod
    def _drain(pending: Pending) -> None:
        while pending:
            dist.wait(pending.popleft()[0])

    # ----------------------------------------------------------------- training
    def train_epoch(self, x: Tensor, y: Tensor, progress: bool = True) -> tuple[Tensor, float]:
        """One pass over ``(x, y)``: rank 0 feeds mini-batches, each rank trains its block.

        ``x`` and ``y`` hold data on rank 0 only (meta tensors elsewhere). Returns the
        mean stats ``(L, 3)`` of every layer, on every rank, and the seconds from the
        first step to the last rank's last step (fill and drain included).
        """
        N, B = x.shape[0], self.config.train.batch_size
        steps = max(1, N // B) if N >= B else 1
        b = min(B, N)
        if self.first:
            perm = torch.randperm(N, device=self.device, generator=self.generator)
        total = torch.zeros(len(self.net.layers), 3, device=self.device)
        pending: Pending = deque()

        start = time.perf_counter()
        bar = tqdm(range(steps), desc=f"epoch {self.epoch + 1}/{self.total_epochs}",
                   disable=not progress, leave=False, unit="batch")
        for s in bar:
            self._set_lr(self.epoch, s, steps)
            if self.first:
                idx = perm[s * B : (s + 1) * B]
                h = self.positives_negatives(x[idx], y[idx])  # (2b, D)
            else:
                h = self._receive(2 * b)  # (2b, D_r)

            for i in self.block:
                h, stats = self.step_fn(i, h, b)
                total[i] += stats
            self._pass_on(h, pending)
            if (s + 1) % LOG_EVERY == 0 or s + 1 == steps:
                mean = (total / (s + 1)).tolist()  # this rank's layers; others are zero
                self._check_finite(mean, self.block)
                if progress:
                    rate = (s + 1) * b / (time.perf_counter() - start)
                    bar.set_postfix_str(_postfix(mean, self.block, rate))

        self._drain(pending)
        total = dist.all_reduce_sum(total)  # each layer's stats live on its rank only
        return total / steps, time.perf_counter() - start

    # ----------------------------------------------------------------- prediction
    @torch.no_grad()
    def label_scores(self, x: Tensor) -> Tensor | None:
        """Summed goodness of every label ``(N, C)`` on rank 0 (None elsewhere).

        Rank 0 computes layer 1 for every image under every label as one process does
        (:meth:`~forwardforward.model.FFNet.first_layer_all_labels`); each rank adds the
        goodness of its scored layers; one reduction sums the ranks' partial scores.
        """
        N, C = x.shape[0], self.num_classes
        mc = self.config.model
        skip = mc.score_layers == "skip-first" and len(self.net.layers) > 1
        scores = torch.zeros(N * C, device=self.device)  # (N*C,)
        pending: Pending = deque()

        for s in range(0, N, EVAL_BATCH):
            b = min(EVAL_BATCH, N - s)
            with flush_denormals(), self._autocast():
                if self.first:
                    h = self.net.first_layer_all_labels(x[s : s + b]).flatten(0, 1)  # (b*C, H1)
                else:
                    h = self._receive(b * C)  # (b*C, D_r)
                for i in self.block:
                    if i > 0:  # layer 1 (rank 0's) is done above
                        h = self.net.layers[i](h)  # (b*C, H_i)
                    if i >= int(skip):
                        scores[s * C : (s + b) * C] += goodness(h, mc.goodness)
            self._pass_on(h, pending)

        self._drain(pending)
        scores = dist.all_reduce_sum(scores)
        return scores.view(N, C) if self.first else None

    def error(self, x: Tensor, y: Tensor) -> float:
        """Fraction of ``x`` misclassified by summed goodness; the same value on every rank."""
        scores = self.label_scores(x)
        wrong = (scores.argmax(dim=1) != y).sum().item() if self.first else None
        return dist.broadcast_object(wrong) / max(1, x.shape[0])

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """The whole trainer's state on rank 0, every block gathered from its rank.

        A collective: every rank must call it. Other ranks get their own partial state.
        """
        peer = self.net.peer
        mine = {
            i: dist.to_cpu((self.net.layers[i].state_dict(), self.optimizers[i].state_dict(),
                            peer[i].state_dict() if peer is not None else None))
            for i in self.block
        }
        parts = dist.gather_object(mine)
        for part in parts or []:
            for i, (layer_state, opt_state, peer_state) in part.items():
                if i not in self.block:
                    self.net.layers[i].load_state_dict(layer_state)
                    self.optimizers[i].load_state_dict(opt_state)
                    if peer is not None:
                        peer[i].load_state_dict(peer_state)
        return super().state_dict()
