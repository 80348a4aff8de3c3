"""Net2Vec: concepts as learned combinations of filters.

Fong & Vedaldi, "Net2Vec: Quantifying and Explaining how Concepts are Encoded by Filters in
Deep Neural Networks", CVPR 2018.

For a concept ``c`` and a layer with ``U`` units, learn ``w ∈ R^U`` and ``b`` so that
``σ(Σ_u w_u · Â_u(x) + b) > 0.5`` segments ``c``, where ``Â_u`` is unit ``u``'s map upsampled
bilinearly to the segmentation size (and standardised per unit over the training images).
The loss is the paper's class-balanced per-pixel binary cross-entropy. Only images labelled in
the concept's category take part (as in NetDissect's IoU). Training and evaluation use
disjoint images; the result is the **set IoU** on held-out images,
``Σ |pred ∩ concept| / Σ |pred ∪ concept|``, beside that of the best single unit (chosen on
the training images, thresholded at its dissection threshold).

Training and scoring run on one torch device (``device``: the weights, the activations and
masks of each side, the optimiser); the results come back to the host. The initial weights
are drawn on the CPU whatever the device, so a CUDA run starts from the CPU run's weights and
differs from it by float32 rounding only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pyanalyzer.errors import UserInputError


@dataclass(frozen=True)
class Net2VecResult:
    """One concept's Net2Vec result on one layer.

    Attributes:
        concept: the concept number; ``name`` its label.
        weights: float32 [U], the learned filter weights (on standardised activations).
        bias: the learned bias.
        set_iou: the combination's set IoU on held-out images.
        best_unit: the best single unit (chosen on the training images).
        best_unit_iou: that unit's set IoU on the held-out images.
        train_images, test_images: how many images each side had.
    """

    concept: int
    name: str
    weights: np.ndarray
    bias: float
    set_iou: float
    best_unit: int
    best_unit_iou: float
    train_images: int
    test_images: int

    def to_dict(self) -> dict:
        top = np.argsort(-np.abs(self.weights))[:10]
        return {
            "concept": self.concept,
            "name": self.name,
            "set_iou": self.set_iou,
            "best_unit": self.best_unit,
            "best_unit_iou": self.best_unit_iou,
            "train_images": self.train_images,
            "test_images": self.test_images,
            "top_weights": {str(int(u)): float(self.weights[u]) for u in top},
        }


def net2vec_split(dataset: Any) -> np.ndarray:
    """bool ``[N]``: the training images of a concept dataset: its ``train`` split when it has
    one beside others, else a fixed 70/30 split by index."""
    n = len(dataset)
    splits = [dataset.image_split(i) for i in range(n)]
    if "train" in splits and any(s != "train" for s in splits):
        return np.array([s == "train" for s in splits])
    return (np.arange(n) % 10) < 7


def _upsample(acts, size: tuple[int, int]):
    import torch.nn.functional as F

    return F.interpolate(acts, size=size, mode="bilinear", align_corners=False)


def _combine(a, mean, std, w, b, size):
    """``Σ_u w_u · up((a_u - mean_u) / std_u) + b``, computed as ``up(Σ_u ...)``: bilinear
    upsampling is linear, so combining the maps first upsamples one map instead of U."""
    import torch

    scaled = w / std  # fold the standardisation into the weights: no [B, U, h, w] temporary
    z = torch.einsum("buhw,u->bhw", a, scaled) + (b - (scaled * mean).sum())
    return _upsample(z[:, None], size)[:, 0]


def net2vec(
    acts_of: Callable[[np.ndarray], np.ndarray],
    segmentation_of: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    n_images: int,
    concepts: Sequence[int],
    concept_names: Sequence[str],
    concept_category: np.ndarray,
    thresholds: np.ndarray,
    is_train: np.ndarray,
    steps: int = 100,
    batch_size: int = 64,
    lr: float = 0.1,
    max_images: int = 1000,
    seed: int = 0,
    device: str = "cpu",
) -> list[Net2VecResult]:
    """Learn one filter combination per concept and compare it with the best single unit.

    Args:
        acts_of: indices [B] → float32 activations [B, U, h, w].
        segmentation_of: indices [B] → (seg int32 [B, K, S, S], image labels int32 [B, L],
            image categories uint8 [B, G]), as ``BrodenDataset.segmentation_batch``.
        n_images: dataset size.
        concepts: concept numbers to learn.
        concept_names, concept_category: per concept number.
        thresholds: float32 [U], the dissection thresholds (for the single units).
        is_train: bool [n_images], the training images (the rest are held out).
        steps, lr: the optimisation (full-batch Adam over the training images).
        batch_size: images read at a time.
        max_images: at most this many training and held-out images each (a seeded random
            subset), which bounds memory.
        seed: for the subsets and the initial weights (drawn on the CPU).
        device: where the training and the scoring run: ``"cpu"``, ``"cuda"`` or ``"auto"``
            (:func:`~pyanalyzer.model.gradient.torch_device`).

    Raises:
        UserInputError: an unknown concept, or one with no labelled images on either side.
        BackendUnavailableError: ``device="cuda"`` and torch sees no CUDA device.
    """
    import torch

    from pyanalyzer._memory import keep_freed_buffers
    from pyanalyzer.model.gradient import torch_device

    dev = torch_device(device)
    keep_freed_buffers()  # every training step reallocates its batch's maps and gradients

    c_total = len(concept_names)
    for c in concepts:
        if not (0 < int(c) < c_total):
            raise UserInputError(f"concept number {c} is not in the dataset (1..{c_total - 1})")
    idx_all = np.arange(n_images)
    # One pass to find which images carry which category and the concept masks' presence.
    cats = []
    for s in range(0, n_images, batch_size):
        _, _, ic = segmentation_of(idx_all[s : s + batch_size])
        cats.append(ic)
    image_cats = np.concatenate(cats).astype(bool)  # [N, G]

    results = []
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    for c in concepts:
        c = int(c)
        g = int(concept_category[c])
        members = idx_all[image_cats[:, g]]
        train = members[is_train[members]]
        test = members[~is_train[members]]
        if len(train) == 0 or len(test) == 0:
            raise UserInputError(
                f"concept {concept_names[c]!r}: its category has {len(train)} training and "
                f"{len(test)} held-out images; both sides need some"
            )
        # Bounded memory: at most max_images per side, drawn at random (seeded).
        if len(train) > max_images:
            train = np.sort(rng.choice(train, max_images, replace=False))
        if len(test) > max_images:
            test = np.sort(rng.choice(test, max_images, replace=False))

        def load(ids: np.ndarray, c: int = c):
            acts, masks = [], []
            for s in range(0, len(ids), batch_size):
                b = ids[s : s + batch_size]
                seg, labels, _ = segmentation_of(b)
                masks.append((seg == c).any(axis=1) | (labels == c).any(axis=1)[:, None, None])
                acts.append(np.asarray(acts_of(b), dtype=np.float32))
            return (
                torch.from_numpy(np.concatenate(acts)).to(dev),
                torch.from_numpy(np.concatenate(masks)).to(dev),
            )

        a_tr, m_tr = load(train)
        size = tuple(m_tr.shape[-2:])
        units = a_tr.shape[1]
        flat = a_tr.double().transpose(0, 1).reshape(units, -1)
        mean, std = flat.mean(1).float(), flat.std(1).clamp_min(1e-6).float()
        alpha = 1.0 - float(m_tr.float().mean())  # the paper's weight of the (rare) positives
        w = torch.zeros(units)
        w.normal_(0.0, 0.01, generator=gen)  # on the CPU: the same start on every device
        w = w.to(dev).requires_grad_(True)
        b = torch.zeros(1, device=dev, requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=lr)
        mf = m_tr.float()
        for _ in range(steps):  # full-batch: the training set is in memory
            logit = _combine(a_tr, mean, std, w, b, size)
            loss = -(
                alpha * mf * torch.nn.functional.logsigmoid(logit)
                + (1 - alpha) * (1 - mf) * torch.nn.functional.logsigmoid(-logit)
            ).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        # Single units: chosen on the training images, all scored on the held-out ones.
        thr = torch.from_numpy(np.asarray(thresholds, np.float32)).view(1, -1, 1, 1).to(dev)

        def unit_counts(a, m, size=size, thr=thr) -> tuple[np.ndarray, np.ndarray]:
            inter = np.zeros(a.shape[1], np.int64)
            union = np.zeros(a.shape[1], np.int64)
            for s in range(0, a.shape[0], batch_size):
                fire = _upsample(a[s : s + batch_size], size) > thr  # [B, U, S, S]
                mm = m[s : s + batch_size, None]
                inter += (fire & mm).sum(dim=(0, 2, 3)).cpu().numpy()
                union += (fire | mm).sum(dim=(0, 2, 3)).cpu().numpy()
            return inter, union

        inter_tr, union_tr = unit_counts(a_tr, m_tr)
        best = int(np.argmax(inter_tr / np.maximum(union_tr, 1)))
        del a_tr, m_tr, mf, flat
        a_te, m_te = load(test)
        inter_te, union_te = unit_counts(a_te, m_te)
        with torch.no_grad():
            pred = _combine(a_te, mean, std, w, b, size) > 0
        ci, cu = int((pred & m_te).sum()), int((pred | m_te).sum())
        results.append(
            Net2VecResult(
                concept=c,
                name=str(concept_names[c]),
                weights=(w.detach() / std).cpu().numpy().astype(np.float32),
                bias=float(b.detach() - (w.detach() * mean / std).sum()),
                set_iou=ci / cu if cu else 0.0,
                best_unit=best,
                best_unit_iou=float(inter_te[best] / max(union_te[best], 1)),
                train_images=len(train),
                test_images=len(test),
            )
        )
    return results
