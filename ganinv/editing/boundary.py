"""InterFaceGAN boundaries fitted as the official code fits them (genforce/interfacegan
``utils/manipulator.py train_boundary``, run by its ``train_boundary.py``): a linear SVM from
scikit-learn between the latents with the highest and the lowest attribute scores; the boundary is
the SVM's unit normal [1, D]. Written in InterFaceGAN's ``boundary.npy`` or e4e's direction ``.pt``
layout (:func:`save_boundary`), read by :func:`ganinv.editing.interfacegan.load_direction`.
"""
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor


class FittedBoundary(NamedTuple):
    normal: Tensor  # [1, D] float32, unit norm, pointing towards high scores
    val_accuracy: float | None  # on the held-out chosen samples; None when there are none
    remaining_accuracy: float | None = None  # on the samples not chosen (labelled by the mid score)


def train_boundary(latents, scores, chosen_ratio=0.02, split_ratio=0.7, c=1.0, seed=0, invalid_value=None):
    """InterFaceGAN's ``train_boundary`` (genforce/interfacegan ``utils/manipulator.py``).

    latents [N, D] (W codes), scores [N] or [N, 1] (continuous or 0/1). Samples whose score equals
    ``invalid_value`` are dropped; the rest are sorted by score (``np.argsort(...)[::-1]``, as the
    official code); the top and bottom ``chosen_num`` are the positives (label 1) and negatives
    (label 0), with ``chosen_num = int(N · chosen_ratio)`` for a ratio in (0, 1] or the number itself
    above 1, at most N // 2. Each side is shuffled and split ``split_ratio`` train / rest validation;
    ``sklearn.svm.SVC(kernel='linear', C=c)`` is fitted on the training pairs, and the boundary is its
    ``coef_`` [1, D] scaled to unit norm (it points towards high scores). Returns the normal, the
    validation accuracy and the accuracy on the samples that were not chosen (labelled 1 above the
    mid score (max + min) / 2), both of which the official code logs.

    Deviation: the shuffles come from ``np.random.RandomState(seed)`` (positives first, then
    negatives) instead of numpy's global state, so a fit is reproducible; ``np.random.seed(seed)``
    before the official function draws the same permutations.
    """
    from sklearn import svm

    x = torch.as_tensor(latents).detach().cpu().double().numpy()
    s = torch.as_tensor(scores).detach().cpu().double().numpy()
    if x.ndim != 2 or s.reshape(-1).shape[0] != x.shape[0] or s.size != x.shape[0]:
        raise ValueError(f"train_boundary: latents must be [N, D] and scores [N] or [N, 1], got "
                         f"{tuple(x.shape)} and {tuple(s.shape)}")
    if chosen_ratio <= 0:
        raise ValueError(f"train_boundary: chosen_ratio must be positive, got {chosen_ratio}")
    s = s.reshape(-1)
    if invalid_value is not None:
        x, s = x[s != invalid_value], s[s != invalid_value]
    if not np.isfinite(x).all() or not np.isfinite(s).all():
        raise ValueError("train_boundary: latents and scores must be finite")
    if s.size == 0 or s.max() == s.min():
        raise ValueError("train_boundary: the scores are constant; there is nothing to separate")
    order = np.argsort(s)[::-1]
    x, s = x[order], s[order]
    n = x.shape[0]
    chosen = int(n * chosen_ratio) if chosen_ratio <= 1 else int(chosen_ratio)
    chosen = min(chosen, n // 2)
    n_train = int(chosen * split_ratio)
    if n_train < 1:
        raise ValueError(f"train_boundary: {n} samples with chosen_ratio {chosen_ratio} and split_ratio "
                         f"{split_ratio} leave no training data")
    rng = np.random.RandomState(seed)
    pos = x[:chosen][rng.permutation(chosen)]
    neg = x[n - chosen:][rng.permutation(chosen)]
    train_x = np.concatenate([pos[:n_train], neg[:n_train]])
    train_y = np.concatenate([np.ones(n_train, dtype=np.int64), np.zeros(n_train, dtype=np.int64)])
    clf = svm.SVC(kernel="linear", C=c).fit(train_x, train_y)

    def accuracy(data, labels):
        return float((clf.predict(data) == labels).mean()) if len(labels) else None

    n_val = chosen - n_train
    val_y = np.concatenate([np.ones(n_val, dtype=np.int64), np.zeros(n_val, dtype=np.int64)])
    val_accuracy = accuracy(np.concatenate([pos[n_train:], neg[n_train:]]), val_y)
    rest_x, rest_s = x[chosen:n - chosen], s[chosen:n - chosen]
    remaining = accuracy(rest_x, (rest_s >= (s[0] + s[-1]) / 2).astype(np.int64))
    normal = clf.coef_.reshape(1, -1).astype(np.float32)
    norm = np.linalg.norm(normal)
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("train_boundary: the SVM found no direction (its coef_ is zero)")
    return FittedBoundary(torch.from_numpy(normal / norm), val_accuracy, remaining)


def save_boundary(normal, path):
    """Write a boundary [1, D] (or [D]) atomically in the layout its suffix names: ``.npy`` is
    InterFaceGAN's ``boundary.npy`` (float32 [1, D]), anything else e4e's direction ``.pt`` (a float32
    tensor [1, D]). Both read back with :func:`load_direction`."""
    from ganinv.checkpoints.safe import atomic_write, save_atomic

    t = torch.as_tensor(normal).detach().float().cpu().reshape(1, -1).contiguous()
    path = Path(path)
    if path.suffix == ".npy":
        return atomic_write(path, lambda f: np.save(f, t.numpy(), allow_pickle=False))
    return save_atomic(t.clone(), path)
