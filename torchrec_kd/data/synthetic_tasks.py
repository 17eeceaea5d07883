"""The synthetic multi-task world: click, conversion (only on clicks), like and dwell, all planted.

Used by :class:`~torchrec_kd.data.synthetic.SyntheticClickLog` when the run lists two or more
tasks. ``click`` is the one-task world's label, row for row (same oracle, same draws). Every
other task has its own oracle head, drawn from the world seed (and the same whichever tasks a
run asks for):

* per-id biases (a hash of the id salted per task: what a wide model memorises),
* latent pair interactions ``W_t[f, g] <v_f, v_g>`` over the **same** per-id codes ``v`` as
  click but with the task's own pairs ``W_t`` (``interaction_density``): tasks share
  embeddings and differ in which features interact, so a narrow student must fit the union
  of every task's pairs into one small embedding while a wide teacher holds them,
* dense terms and dense x sparse interactions.

Its raw logit ``own_t`` is standardised and mixed with click's: ``share_t * click + sqrt(1 -
share_t^2) * own_t``, times ``logit_scale``, shifted to the task's rate (``share < 0``: a task
partly conflicting with click). ``conversion`` is drawn only on clicked rows (0 elsewhere) and
its rate is ``P(conversion | click)``; ``dwell`` is the mixed value plus Gaussian noise (a
regression label, unit scale).

Example::

    world = TaskWorld(log, ["click", "conversion"], SyntheticTasksConfig())
    labels, probs = world.labels(z, lengths, ids, click_prob, click_labels, draws)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from torchrec_kd.config.data_sources import SyntheticTasksConfig
from torchrec_kd.data.synthetic_hash import _block_seed, _hash32

# Each head's draw index (world seed, 98, index): fixed, so a head does not depend on the run's task list.
HEADS = {"conversion": 1, "like": 2, "dwell": 3}


@dataclass
class Head:
    """One task's own oracle (before mixing with click's)."""

    pair_w: torch.Tensor  # [F, F] symmetric, zero diagonal
    pair_norm: float
    dense_w: torch.Tensor  # [D]
    dense_sparse_flat: torch.Tensor  # [D, F * k]
    salt: int
    std: float = 1.0  # of the raw logit on the calibration sample


def draw_head(gen_seed: int, F: int, D: int, k: int, density: float, salt: int) -> Head:
    """A head's random parts from its own generator seed."""
    g = torch.Generator().manual_seed(gen_seed)
    mask = torch.rand(F, F, generator=g) < density
    w = torch.triu(mask * torch.randn(F, F, generator=g), diagonal=1)
    dense_sparse = torch.randn(F, D, k, generator=g) * (torch.rand(F, 1, 1, generator=g) < 0.3) / math.sqrt(0.3 * F * D)
    return Head(w + w.T, math.sqrt(max(1.0, float(w.ne(0).sum()))), torch.randn(D, generator=g),
                dense_sparse.permute(1, 0, 2).reshape(D, F * k), salt)


def _bisect(target: float, mean_at) -> float:
    """The shift ``b`` with ``mean_at(b) == target`` (``mean_at`` increasing)."""
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if mean_at(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


class TaskWorld:
    """The heads of the tasks a run asks for, calibrated on the world's fixed sample.

    Args:
        log (SyntheticClickLog): the world (its codebook, hashing and click oracle).
        columns (Sequence[str]): the world task of each run task, in run order.
        cfg (SyntheticTasksConfig): shares, rates, dwell noise, pair density.
    """

    def __init__(self, log, columns: Sequence[str], cfg: SyntheticTasksConfig) -> None:

        self.log, self.columns, self.cfg = log, list(columns), cfg
        syn = log.cfg
        density = syn.interaction_density if cfg.interaction_density is None else cfg.interaction_density
        self.heads: Dict[str, Head] = {
            name: draw_head(_block_seed(log.seed, 98, i), syn.num_sparse, syn.num_dense, syn.latent_dim, density,
                            salt=0x7A5C + i)
            for name, i in HEADS.items() if name in self.columns}
        self.share = {"conversion": cfg.conversion_share, "like": cfg.like_share, "dwell": cfg.dwell_share}
        self.shift: Dict[str, float] = {}

    # ------------------------------------------------------------------ oracle
    def own_logit(self, head: Head, z: torch.Tensor, lengths: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """A head's raw logit: its biases, its pairs over the shared codes, its dense terms."""

        log, syn = self.log, self.log.cfg
        R, F = lengths.shape
        flat_len = lengths.flatten()
        feat = torch.arange(F).repeat(R)
        if ids.numel() != R * F:
            feat = feat.repeat_interleave(flat_len)
        h = _hash32(ids * 131 + feat, salt=log.seed)
        hb = _hash32(h, salt=head.salt)  # the task's own per-id bias
        u1 = (hb.double() + 1.0) / (2.0**32 + 2.0)
        u2 = (_hash32(hb, salt=7).double() + 0.5) / 2.0**32
        bias = (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).float()
        vec = log._codebook[feat, h % syn.num_clusters]
        if ids.numel() != R * F:  # mean-pool each bag
            bag = torch.arange(R * F).repeat_interleave(flat_len)
            inv_len = 1.0 / flat_len.float()
            vec = torch.zeros(R * F, syn.latent_dim).index_add_(0, bag, vec).mul_(inv_len[:, None])
            bias = torch.zeros(R * F).index_add_(0, bag, bias).mul_(inv_len)
        vec = vec.view(R, F, syn.latent_dim)
        pair = 0.5 * (vec * torch.matmul(head.pair_w, vec)).sum((1, 2)) / head.pair_norm * math.sqrt(syn.latent_dim)
        dense = z @ head.dense_w / math.sqrt(syn.num_dense)
        cross = ((z @ head.dense_sparse_flat).view(R, F, -1) * vec).sum((1, 2))
        return (syn.bias_weight * bias.view(R, F).sum(1) / math.sqrt(F) + syn.pair_weight * pair
                + syn.dense_weight * dense + syn.cross_weight * cross)

    def mixed(self, name: str, click_std: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """``share * click + sqrt(1 - share^2) * own``, both standardised (unit variance on the sample)."""
        s = self.share[name]
        return s * click_std + math.sqrt(max(0.0, 1.0 - s * s)) * own / self.heads[name].std

    def calibrate(self, parts: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]], click_raw: torch.Tensor) -> None:
        """Each head's std, and its shift to the configured rate, on the world's fixed sample.

        Args:
            parts (List[Tuple]): the sample's (dense latent, lengths, ids) blocks.
            click_raw (torch.Tensor): click's raw logits of those rows (before scaling).
        """
        log, cfg, scale = self.log, self.cfg, self.log.cfg.logit_scale
        click_std = click_raw.double() * log._scale / scale
        p_click = torch.sigmoid(click_raw.double() * log._scale + log._bias)
        for name, head in self.heads.items():
            own = torch.cat([self.own_logit(head, *p) for p in parts]).double()
            head.std = float(own.std().clamp_min(1e-6))
            x = scale * self.mixed(name, click_std, own)
            if name == "conversion":  # P(conversion | click): the mean over rows weighted by P(click)
                self.shift[name] = _bisect(cfg.conversion_rate,
                                           lambda b, x=x: float((p_click * torch.sigmoid(x + b)).sum() / p_click.sum()))
            elif name == "like":
                self.shift[name] = _bisect(cfg.like_rate, lambda b, x=x: float(torch.sigmoid(x + b).mean()))

    # ------------------------------------------------------------------- labels
    def labels(self, z: torch.Tensor, lengths: torch.Tensor, ids: torch.Tensor, click_raw: torch.Tensor,
               click: torch.Tensor, draws: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The run's ``[R, T]`` labels and oracle values (probabilities; dwell: its expected value).

        Args:
            z, lengths, ids: the rows (as the click oracle reads them).
            click_raw (torch.Tensor): click's raw logits.
            click (torch.Tensor): click's drawn labels [R].
            draws (torch.Tensor): [R, 4] independent draws: uniforms for conversion and like, a
                standard normal for dwell's noise (column 3).

        Returns:
            Tuple[torch.Tensor, torch.Tensor]: labels [R, T] float32 and oracle values [R, T].
        """
        scale = self.log.cfg.logit_scale
        click_std = click_raw * (self.log._scale / scale)
        p_click = torch.sigmoid(click_raw * self.log._scale + self.log._bias)
        labels, values = [], []
        for name in self.columns:
            if name == "click":
                labels.append(click)
                values.append(p_click)
                continue
            mix = self.mixed(name, click_std, self.own_logit(self.heads[name], z, lengths, ids))
            if name == "dwell":
                labels.append(mix + self.cfg.dwell_noise * draws[:, 3])
                values.append(mix)
                continue
            p = torch.sigmoid(scale * mix + self.shift[name])
            drawn = (draws[:, HEADS[name] - 1] < p).float()
            if name == "conversion":  # observed only on clicks: 0 elsewhere
                drawn = drawn * click
            labels.append(drawn)
            values.append(p)
        return torch.stack(labels, 1).float(), torch.stack(values, 1).float()


def task_draws(seed: int, split: int, block: int, rows: int) -> torch.Tensor:
    """A block's ``[rows, 4]`` draws for the non-click tasks, apart from the click world's own stream."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, split, block, 0x7A5C]).generate_state(1)[0]))
    return torch.cat([torch.rand(rows, 3, generator=g), torch.randn(rows, 1, generator=g)], 1)


__all__ = ["HEADS", "Head", "TaskWorld", "task_draws"]
