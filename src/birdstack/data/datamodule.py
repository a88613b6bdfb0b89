"""One ``Dataset`` / ``LightningDataModule`` API for both encodings.

A :class:`BirdDataset` serves model inputs from cached spectrograms (memory-mapped,
so a large corpus does not have to fit in RAM): one sample per recording for
``stacked``, one per window for ``segments`` (or, for training with
``encoding.train_crops=k``, ``k`` windows per recording at random offsets that
change every epoch). Every item is ``(x, y, rec)``: the input tensor, the integer
label and the recording's row number, so that window scores can be pooled per
recording.

    >>> from birdstack.data.prepare import prepare            # doctest: +SKIP
    >>> prepared = prepare(DataConfig(path="data/birds-demo"), Preprocessing())  # doctest: +SKIP
    >>> dm = BirdDataModule(prepared, val_fold=0, batch_size=16)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from birdstack.config import Preprocessing, TaskConfig
from birdstack.features.birdnet import pool_windows
from birdstack.features.encoding import encode_segment, encode_stacked, segment_starts

if TYPE_CHECKING:
    from birdstack.data.augment import TrainAugment
    from birdstack.data.prepare import PreparedData


def _load_db(path: str) -> np.ndarray:
    return np.load(path, mmap_mode="r")


RANDOM_START = -1  # an item whose window start is drawn when it is served


class MultiLabelTargets:
    """Multi-label targets (``task.kind=multilabel``) of a manifest's records.

    A focal recording's target is its primary label (1) and secondary labels
    (``task.secondary_weight``) for every window; an annotated soundscape's window
    gets the species of the events it overlaps (:func:`~birdstack.data.annotations.
    window_targets`), and a whole-recording input (``stacked``, ``pooled``) every
    species of the clip; a negative clip is all zeros.
    """

    def __init__(
        self, records: pd.DataFrame, classes: list[str], task: TaskConfig, pre: Preprocessing
    ) -> None:
        from birdstack.data.annotations import has_events, parse_events

        self.classes, self.task, self.pre = list(classes), task, pre
        index = {c: i for i, c in enumerate(self.classes)}
        k = len(self.classes)
        self.weak = np.zeros((len(records), k), dtype=np.float32)
        self.events: list[pd.DataFrame | None] = []
        for r, (_, row) in enumerate(records.iterrows()):
            ev = row.get("events")
            labels = json.loads(row["labels"]) if isinstance(row.get("labels"), str) else []
            if has_events(ev):
                self.events.append(parse_events(ev))
                for lab in labels:
                    self.weak[r, index[lab]] = 1.0
                continue
            self.events.append(None)
            for lab in labels:
                if lab in index:
                    self.weak[r, index[lab]] = task.secondary_weight
            if str(row.get("primary_label", "")) in index:
                self.weak[r, index[str(row["primary_label"])]] = 1.0

    def __call__(self, i: int, start_frame: int) -> np.ndarray:
        ev = self.events[i]
        if ev is None or self.pre.encoding.kind not in ("segments",):
            return self.weak[i]
        from birdstack.data.annotations import window_targets

        start_s = start_frame * self.pre.seconds_per_frame()
        t = self.task
        return window_targets(
            ev,
            [start_s],
            self.pre.input_seconds(),
            self.classes,
            t.min_overlap_s,
            t.min_overlap_frac,
        )[0]


class BirdDataset(Dataset):
    """Model inputs from a manifest (columns ``cache_file``, ``label_idx``, ``frames``).

    ``random_crops=k`` (``segments`` only) makes ``k`` items per recording whose
    window start is drawn when served: from ``(seed, epoch, index)`` when the
    sampler passes ``(index, epoch)`` pairs (:class:`EpochSeededSampler` with
    ``with_epoch=True``, so resumed runs draw the same crops), else from the
    loader's RNG. ``augment`` (training sets only): a
    :class:`~birdstack.data.augment.TrainAugment` that encodes every item with its
    augmentations, drawn from ``(seed, epoch, index)`` the same way. An index may come
    as ``(index, epoch, draw)``: the ``draw``-th serving of the item in that epoch
    (class-balanced sampling), which gets crops and augmentations of its own.

    >>> ds = BirdDataset(records, Preprocessing(...))  # doctest: +SKIP
    >>> x, y, rec = ds[0]                              # doctest: +SKIP
    """

    def __init__(
        self,
        records: pd.DataFrame,
        preprocessing: Preprocessing,
        random_crops: int | None = None,
        seed: int = 0,
        teacher: list[Any] | None = None,
        targets: MultiLabelTargets | None = None,
        augment: TrainAugment | None = None,
    ) -> None:
        self.records = records.reset_index(drop=True)
        self.augment = augment
        self.pre = preprocessing
        self.seed = seed
        # multi-label: the item's target is a float vector of the classes (else its label)
        self.targets = targets
        # distillation: one TeacherTable per record (items then carry the teacher's scores)
        self.teacher = teacher
        if teacher is not None and len(teacher) != len(self.records):
            raise ValueError("one teacher table per record is needed")
        self.files = self.records["cache_file"].astype(str).tolist()
        self.labels = self.records["label_idx"].astype(int).to_numpy()
        self.frames = self.records["frames"].astype(int).to_numpy()
        enc = preprocessing.encoding
        self.norm = preprocessing.input_norm()
        if random_crops is not None and enc.kind != "segments":
            raise ValueError("random_crops needs encoding.kind='segments'")
        self.random_crops = random_crops
        if enc.kind == "segments":
            window, hop = preprocessing.window_frames(), preprocessing.hop_frames()
            self.window = window
            if random_crops is not None:
                self.items = [
                    (i, RANDOM_START) for i in range(len(self.records)) for _ in range(random_crops)
                ]
            else:
                self.items = [
                    (i, s)
                    for i, n in enumerate(self.frames)
                    for s in segment_starts(int(n), window, hop, enc.min_last_window)
                ]
        else:
            self.items = [(i, 0) for i in range(len(self.records))]
        self._cache: dict[int, np.ndarray] = {}
        self._pooled: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _db(self, i: int) -> np.ndarray:
        if i not in self._cache:
            db = _load_db(self.files[i])
            # BirdNET windows are columns of a [7546, windows] array: read it once, not strided
            self._cache[i] = np.ascontiguousarray(db.T).T if self.pre.is_birdnet else db
        return self._cache[i]

    @property
    def draws_per_epoch(self) -> bool:
        """Whether items draw something each epoch (random crops, augmentations)."""
        return self.random_crops is not None or self.augment is not None

    def _random_start(self, i: int, idx: int, epoch: int | None, draw: int = 0) -> int:
        room = int(self.frames[i]) - self.window
        if room <= 0:
            return 0
        if epoch is None:
            return int(torch.randint(room + 1, ()).item())
        rng = np.random.default_rng([self.seed, epoch, idx] + ([draw] if draw else []))
        return int(rng.integers(room + 1))

    def _teacher_probs(self, i: int, start: int) -> torch.Tensor:
        """The teacher's scores for item ``(i, start)``: its span, or the whole recording."""
        assert self.teacher is not None
        t = self.teacher[i]
        if self.pre.encoding.kind == "segments":
            spf = self.pre.seconds_per_frame()
            a = start * spf
            p = t.span(a, a + self.pre.input_seconds())
        else:
            p = t.probs
        return torch.as_tensor(np.asarray(p, dtype=np.float32))

    def _teacher_embedding(self, i: int, start: int) -> torch.Tensor:
        """The teacher's embedding of item ``(i, start)``: over its span, or the recording."""
        assert self.teacher is not None
        t = self.teacher[i]
        if self.pre.encoding.kind == "segments":
            a = start * self.pre.seconds_per_frame()
            e = t.span_embedding(a, a + self.pre.input_seconds())
        else:
            e = t.embedding()
        return torch.from_numpy(np.ascontiguousarray(e, dtype=np.float32))

    def __getitem__(self, idx: int | tuple[int, ...]) -> tuple[Any, ...]:
        epoch, draw = None, 0
        if isinstance(idx, tuple):
            idx, epoch, draw = idx if len(idx) == 3 else (*idx, 0)
        i, start = self.items[idx]
        if start == RANDOM_START:
            start = self._random_start(i, idx, epoch, draw)
        db = self._db(i)
        enc = self.pre.encoding
        if self.pre.is_birdnet and enc.kind == "pooled":  # the whole recording, pooled once
            if i not in self._pooled:
                self._pooled[i] = pool_windows(db)
            x = self._pooled[i]
        elif self.pre.is_birdnet:  # one BirdNET window: its embedding and logits, as they are
            x = np.array(db[:, start], dtype=np.float32)
        elif self.augment is not None:  # training only: noise, shift, masks (data/augment.py)
            from birdstack.data.augment import item_rng

            rng = (
                item_rng(self.seed, epoch, idx, draw)
                if epoch is not None
                else np.random.default_rng(int(torch.randint(2**62, ()).item()))
            )
            x = self.augment.encode(db, start, rng)
        elif enc.kind == "segments":
            x = encode_segment(db, start, self.window, self.norm)
        else:
            assert enc.target_frames is not None
            x = encode_stacked(np.asarray(db), enc.target_frames, enc.channels, self.norm)
        x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        y: Any = int(self.labels[i])
        if self.targets is not None:
            y = torch.from_numpy(np.array(self.targets(i, start), dtype=np.float32))
        if self.teacher is not None:
            if self.teacher[i].window_embeddings is not None:  # distill.embedding
                return x_t, y, i, self._teacher_probs(i, start), self._teacher_embedding(i, start)
            return x_t, y, i, self._teacher_probs(i, start)
        return x_t, y, i

    @property
    def item_recordings(self) -> np.ndarray:
        """Recording row of every item (to pool window scores per recording)."""
        return np.array([i for i, _ in self.items], dtype=np.int64)


def draw_weights(
    labels: np.ndarray, class_balanced: bool, unlabelled_share: float | None = None
) -> np.ndarray:
    """Each training item's weight in an epoch's draws (``labels``: -1 = unlabelled audio).

    ``class_balanced``: an item weighs 1 / (count of its label), so every label, and the
    unlabelled audio as a whole, is drawn as often; else every item weighs the same.
    ``unlabelled_share`` (``distill.unlabelled_share``): the unlabelled items together get
    that share of the draws (each the same), the labelled ones the rest, weighted as above.

    >>> draw_weights(np.array([0, 0, 1, -1]), class_balanced=True).round(3).tolist()
    [0.5, 0.5, 1.0, 1.0]
    >>> draw_weights(np.array([0, 0, 1, -1]), False, unlabelled_share=0.5).round(3).tolist()
    [0.167, 0.167, 0.167, 0.5]
    """
    labels = np.asarray(labels)
    if class_balanced:
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        w = 1.0 / counts[inverse]
    else:
        w = np.ones(len(labels))
    if unlabelled_share is not None:
        unl = labels < 0
        if not unl.any() or unl.all():
            raise ValueError("unlabelled_share needs labelled and unlabelled items")
        w = w.astype(np.float64)
        w[~unl] *= (1.0 - unlabelled_share) / w[~unl].sum()
        w[unl] = unlabelled_share / unl.sum()
    return w


class EpochSeededSampler(Sampler):
    """Random order that depends only on ``seed`` and the epoch (so resumed runs match).

    Lightning calls :meth:`set_epoch` at the start of every training epoch. With
    ``with_epoch=True`` it yields ``(index, epoch)`` pairs, for datasets that draw
    something per epoch (random crops).

    >>> s = EpochSeededSampler(4, seed=0, with_epoch=True)
    >>> s.set_epoch(3)
    >>> sorted(s)
    [(0, 3), (1, 3), (2, 3), (3, 3)]

    ``labels`` (class-balanced sampling, ``data.sampling=class_balanced``): each epoch
    draws ``n`` indices with replacement, index ``i`` with weight 1 / (count of
    ``labels[i]``), from ``(seed, epoch)`` alone. With ``with_epoch`` it then yields
    ``(index, epoch, draw)``, ``draw`` counting earlier servings of the index in the epoch.
    ``weights``: the draw weight of every item, given outright (see :func:`draw_weights`).

    ``num_replicas`` > 1 (DDP): every process draws the same epoch order and serves every
    ``num_replicas``-th item of it from ``rank`` on, the order padded by its first items to
    a multiple of ``num_replicas`` (as torch's ``DistributedSampler``), so the processes
    together serve one epoch of the single-process sampler, class-balanced draws included.

    >>> list(EpochSeededSampler(5, seed=0))
    [4, 0, 1, 3, 2]
    >>> [list(EpochSeededSampler(5, seed=0, num_replicas=2, rank=r)) for r in (0, 1)]
    [[4, 1, 2], [0, 3, 4]]
    """

    def __init__(
        self,
        n: int,
        seed: int,
        with_epoch: bool = False,
        labels: np.ndarray | None = None,
        weights: np.ndarray | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.num_replicas, self.rank = num_replicas, rank
        self.n, self.seed, self.epoch, self.with_epoch = n, seed, 0, with_epoch
        self.weights: torch.Tensor | None = None
        if labels is not None and weights is not None:
            raise ValueError("give labels or weights, not both")
        if labels is not None:
            weights = draw_weights(np.asarray(labels), class_balanced=True)
        if weights is not None:
            if len(weights) != n:
                raise ValueError("one label (or weight) per item is needed")
            self.weights = torch.as_tensor(np.asarray(weights), dtype=torch.float64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int | tuple[int, ...]]:
        items = self._epoch_items()
        if self.num_replicas > 1 and items:
            items += items[: len(self) * self.num_replicas - len(items)]
            items = items[self.rank :: self.num_replicas]
        return iter(items)

    def _epoch_items(self) -> list[Any]:
        """This epoch's whole order (every process computes the same)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
            if not self.with_epoch:
                return order
            seen: dict[int, int] = {}
            out: list[Any] = []
            for i in order:
                out.append((i, self.epoch, seen.get(i, 0)))
                seen[i] = seen.get(i, 0) + 1
            return out
        order = torch.randperm(self.n, generator=g).tolist()
        if self.with_epoch:
            return [(i, self.epoch) for i in order]
        return order

    def __len__(self) -> int:
        return -(-self.n // self.num_replicas)


class BirdDataModule(L.LightningDataModule):
    """Train / validation loaders for one fold of a prepared data set."""

    def __init__(
        self,
        prepared: PreparedData,
        val_fold: int = 0,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        teacher: dict[str, Any] | None = None,
        unlabelled: pd.DataFrame | None = None,
        task: TaskConfig | None = None,
        augment: TrainAugment | None = None,
        sampling: str = "shuffle",
        unlabelled_share: float | None = None,
    ) -> None:
        """``teacher``: recording path -> TeacherTable (distillation; the training items
        then carry the teacher's scores). ``unlabelled``: extra training records
        (``cache_file``, ``frames``, ``path``; ``label_idx`` -1) trained on those alone.
        ``augment``: the training set's item augmentations (never the validation set's).
        ``sampling``: ``shuffle`` or ``class_balanced`` (``data.sampling``).
        ``unlabelled_share``: the share of each epoch's draws served from ``unlabelled``
        (``distill.unlabelled_share``; :func:`draw_weights`)."""
        super().__init__()
        self.prepared = prepared
        self.val_fold = val_fold
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.sampling = sampling
        has_unlabelled = unlabelled is not None and len(unlabelled) > 0
        self.unlabelled_share = unlabelled_share if has_unlabelled else None
        m = prepared.kept
        self.train_records = m[m["fold"] != val_fold].reset_index(drop=True)
        if has_unlabelled:
            assert unlabelled is not None
            extra = unlabelled.assign(label_idx=-1)
            self.train_records = pd.concat([self.train_records, extra], ignore_index=True)
        self.val_records = m[m["fold"] == val_fold].reset_index(drop=True)
        crops = prepared.preprocessing.encoding.train_crops
        if prepared.preprocessing.encoding.kind != "segments":
            crops = None  # a stacked input is the whole recording: there is nothing to crop
        tables = None
        if teacher is not None:
            tables = [teacher[str(p)] for p in self.train_records["path"]]
        pre = prepared.preprocessing
        multilabel = task is not None and task.multilabel

        def targets(records: pd.DataFrame) -> MultiLabelTargets | None:
            if not multilabel:
                return None
            assert task is not None
            return MultiLabelTargets(records.reset_index(drop=True), prepared.classes, task, pre)

        self.train_set = BirdDataset(
            self.train_records,
            pre,
            random_crops=crops,
            seed=seed,
            teacher=tables,
            targets=targets(self.train_records),
            augment=augment,
        )
        # never augmented
        self.val_set = BirdDataset(self.val_records, pre, targets=targets(self.val_records))

    def _loader(self, ds: BirdDataset, train: bool) -> DataLoader:
        """Training: :class:`EpochSeededSampler`, split between the processes under DDP.
        Validation: every recording's windows in order, on every process (the Trainer is
        built with ``use_distributed_sampler=False``): recording-level figures and a
        detector's thresholds need all the windows of every validation recording, and every
        process then computes the same figures and thresholds."""
        sampler = None
        if train:
            world = self.trainer.world_size if self.trainer is not None else 1
            rank = self.trainer.global_rank if self.trainer is not None else 0
            weights = None
            balanced = self.sampling == "class_balanced"  # weights 1 / class count, per item
            if balanced or self.unlabelled_share is not None:
                weights = draw_weights(
                    ds.labels[ds.item_recordings], balanced, self.unlabelled_share
                )
            sampler = EpochSeededSampler(
                len(ds),
                self.seed,
                with_epoch=ds.draws_per_epoch,
                weights=weights,
                num_replicas=world,
                rank=rank,
            )
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # a last training batch of one or two samples makes BatchNorm's statistics erratic
            drop_last=bool(train and len(ds) > self.batch_size),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def stats_dataloader(self, epoch: int = 0) -> DataLoader:
        """The training inputs of ``epoch`` in a fixed order, for BatchNorm statistics.

        Every training item once, with the random crops (and augmentations) that training
        draws in that epoch, unshuffled and with no batch dropped; the same on every process.
        """
        ds = self.train_set
        crops = ds.draws_per_epoch
        order = [(i, epoch) if crops else i for i in range(len(ds))]
        return DataLoader(
            ds, batch_size=self.batch_size, sampler=order, num_workers=self.num_workers
        )
