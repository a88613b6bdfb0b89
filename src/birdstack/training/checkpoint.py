"""Safe checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A birdstack checkpoint is an ordinary Lightning checkpoint with a ``birdstack``
block of plain values (model name and arguments, class names, preprocessing,
training config). Nothing in it is pickled code, so loading one cannot run code.

    >>> ckpt = load_checkpoint("runs/demo/checkpoints/best.ckpt")   # doctest: +SKIP
    >>> net, info = build_model_from_checkpoint(ckpt)                # doctest: +SKIP
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import nn

from birdstack.config import Preprocessing, from_dict
from birdstack.utils import BadInputError, atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes to a temporary file and renames it into place."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any = None
    ) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says about itself."""

    path: str
    classes: list[str]
    model_name: str
    model_args: dict[str, Any]
    preprocessing: Preprocessing
    config: dict[str, Any]
    epoch: int


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``), with clear errors on bad files."""
    p = Path(path)
    if p.is_dir():
        found = [c for c in (p / "checkpoints" / "best.ckpt", p / "best.ckpt") if c.is_file()]
        hint = f" (this run's best checkpoint is {found[0]})" if found else ""
        raise BadInputError(p, f"a folder, not a checkpoint file{hint}")
    if not p.is_file():
        raise BadInputError(p, "checkpoint file not found")
    with open(p, "rb") as fh:
        head = fh.read(4)
    # torch.save writes a zip archive (or, in its legacy format, a pickle: protocol >= 2);
    # anything else (a text file, an empty or truncated download) is not worth unpickling,
    # and the safe loader's "refused" message would wrongly suggest a hostile file
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        what = "an empty file" if not head else f"a file starting with {head!r}"
        raise BadInputError(
            p,
            f"not a readable checkpoint: {what}, not a file written by torch.save "
            "(a birdstack checkpoint is RUN/checkpoints/best.ckpt or last.ckpt)",
        )
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise BadInputError(
            p,
            "refused to load: the checkpoint contains objects other than tensors and plain "
            f"values (a checkpoint must never run code on load): {str(e).splitlines()[0]}",
        ) from None
    except Exception as e:  # truncated / not a torch file
        raise BadInputError(p, f"not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "birdstack" not in ckpt or "state_dict" not in ckpt:
        raise BadInputError(p, "not a birdstack checkpoint (no 'birdstack' block)")
    return ckpt


def checkpoint_info(ckpt: dict[str, Any], path: str = "") -> CheckpointInfo:
    """Parse the ``birdstack`` block of a loaded checkpoint."""
    meta = ckpt["birdstack"]
    model = meta["model"]
    return CheckpointInfo(
        path=str(path),
        classes=list(meta["classes"]),
        model_name=model["name"],
        model_args=dict(model["args"]),
        preprocessing=from_dict(Preprocessing, meta["preprocessing"]),
        config=meta.get("config", {}),
        epoch=int(ckpt.get("epoch", -1)),
    )


def build_model_from_checkpoint(ckpt: dict[str, Any]) -> tuple[nn.Module, CheckpointInfo]:
    """Rebuild the network of a checkpoint (no download: pretrained is forced off) in eval mode."""
    from birdstack.models import create_model

    info = checkpoint_info(ckpt)
    args = {**info.model_args, "pretrained": False, "weights": None}
    args.pop("name", None)
    net = create_model(info.model_name, **args)
    state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(state)
    net.eval()
    return net, info


def run_manifest(checkpoint: str | os.PathLike[str]) -> Path | None:
    """The manifest of the run that wrote ``checkpoint`` (``<run>/checkpoints/x.ckpt`` ->
    ``<run>/data/manifest.csv``), or ``None`` for a checkpoint moved out of its run."""
    manifest = Path(checkpoint).resolve().parent.parent / "data" / "manifest.csv"
    return manifest if manifest.is_file() else None


def training_rows(checkpoint: str | os.PathLike[str]) -> Any:
    """The kept ``train`` rows of the checkpoint's run manifest (a DataFrame), or ``None``
    for a checkpoint moved out of its run."""
    from birdstack.data.prepare import read_manifest

    manifest = run_manifest(checkpoint)
    if manifest is None:
        return None
    return read_manifest(manifest, "train", {"session": str})


def trained_on(
    checkpoint: str | os.PathLike[str], paths: list[str], train: Any = None
) -> list[bool] | None:
    """Which of ``paths`` the checkpoint's run trained on (``train``: its
    :func:`training_rows`, read here when not given), compared by content (SHA-1), so
    copies and moved folders are caught too. Only files whose size equals a training
    file's are hashed, so scoring a large archive reads little more than its directory
    entries.

    ``None`` when the checkpoint has no run manifest beside it (nothing to compare with).
    """
    from birdstack.utils import file_sha1

    if train is None:
        train = training_rows(checkpoint)
    if train is None:
        return None
    by_size: dict[int, list[str]] = {}
    for p in train["path"].astype(str):
        if Path(p).is_file():
            by_size.setdefault(Path(p).stat().st_size, []).append(p)
    hashes: dict[int, set[str]] = {}

    def seen(path: str) -> bool:
        if not Path(path).is_file():
            return False
        size = Path(path).stat().st_size
        if size not in by_size:
            return False
        if size not in hashes:
            hashes[size] = {file_sha1(t) for t in by_size[size]}
        return file_sha1(path) in hashes[size]

    return [seen(p) for p in paths]
