"""Training throughput and data-wait share, through the real DataModule and Lightning Trainer.

    .venv/bin/python benchmarks/training.py [--data DIR] [--epochs 3] [--batch-size 16]
        [--encoding stacked|segments] [--accelerator cpu|gpu] [--precision 32-true|bf16-mixed]
        [--workers N]

For ``mobilenet_compact`` and ``resnet18`` (the stacked encoding by default) it prints training
samples per second and the share of training wall time spent waiting for the next batch
(the DataLoader), measured by a callback between the end of one batch and the start of
the next. The baseline, measured in the same run, is the model's own compute: the same
number of forward/backward steps on one batch already in memory. The ratio
(pipeline samples/s ÷ compute-only samples/s) shows what the data pipeline costs.
Target: data wait under 10 % once the feature cache is warm (the first epoch warms it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from birdstack.config import Config  # noqa: E402
from birdstack.data.datamodule import BirdDataModule  # noqa: E402
from birdstack.data.prepare import prepare  # noqa: E402
from birdstack.training.train import build_module  # noqa: E402


class WaitTimer(L.Callback):
    """Wall time of training batches and of the gaps between them (waiting for data)."""

    def __init__(self) -> None:
        self.wait = 0.0
        self.total = 0.0
        self.samples = 0
        self._end: float | None = None
        self._epoch_start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = self._end = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch > 0 and self._end is not None:  # epoch 0 warms the cache
            self.wait += time.perf_counter() - self._end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._end = time.perf_counter()
        if trainer.current_epoch > 0:
            self.samples += len(batch[1])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch > 0 and self._end is not None:
            self.total += self._end - self._epoch_start


def compute_only(
    module: L.LightningModule, batch, steps: int, device: str = "cpu", bf16: bool = False
) -> float:
    """Samples/s of forward + backward + step on one batch already on ``device``."""
    module = module.to(device)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    x, y = batch[0].to(device), batch[1].to(device)
    module.train()

    def step() -> None:
        opt.zero_grad()
        with torch.autocast(
            device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16
        ):
            loss = torch.nn.functional.cross_entropy(module(x), y)
        loss.backward()
        opt.step()

    step()  # warm-up (kernel selection on a GPU)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return steps * len(y) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=str(REPO / "data" / "birds-demo"))
    ap.add_argument(
        "--epochs", type=int, default=3, help="epoch 0 warms the cache and is not timed"
    )
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--models", default="mobilenet_compact,resnet18")
    ap.add_argument("--encoding", choices=("stacked", "segments"), default="stacked")
    ap.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--precision", default="32-true", help="32-true | bf16-mixed")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    args = ap.parse_args()
    device = "cuda" if args.accelerator == "gpu" else "cpu"
    torch.set_num_threads(args.threads)
    from birdstack.cli.main import quiet_lightning

    quiet_lightning()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config.from_dict(
            {
                "data": {"path": args.data, "cache_dir": str(Path(tmp) / "cache")},
                "task": {"kind": "multiclass"},  # the study's task, as prepare() below
                "preprocessing": {"encoding": {"kind": args.encoding, "short": "pad"}},
                "trainer": {"batch_size": args.batch_size, "epochs": args.epochs},
                # plain training: this times the data pipeline and the model, not the recipe
                "optim": {"scheduler": "none", "label_smoothing": 0.0},
                "augment": {"specaugment": False, "mixup_alpha": 0.0},
            }
        )
        prepared = prepare(cfg.data, cfg.preprocessing, Path(tmp) / "prep", progress=False)
        print(
            f"data {args.data}: {len(prepared.kept)} recordings, input "
            f"{prepared.preprocessing.input_shape()}, batch {args.batch_size}, "
            f"{args.threads} torch thread(s), {args.workers} loader worker(s), "
            f"{args.accelerator} {args.precision}, {args.epochs - 1} timed epoch(s)"
        )
        print(
            f"{'model':<20}{'pipeline samples/s':>20}{'data wait':>12}"
            f"{'compute-only samples/s':>25}{'ratio':>8}"
        )
        for name in args.models.split(","):
            c = cfg.override({"model.name": name})
            dm = BirdDataModule(
                prepared, val_fold=0, batch_size=args.batch_size, num_workers=args.workers
            )
            module = build_module(c, prepared)
            timer = WaitTimer()
            trainer = L.Trainer(
                max_epochs=args.epochs,
                accelerator=args.accelerator,
                devices=1,
                precision=args.precision,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                callbacks=[timer],
                limit_val_batches=0,
                num_sanity_val_steps=0,
            )
            trainer.fit(module, datamodule=dm)
            pipe = timer.samples / timer.total if timer.total else float("nan")
            wait = timer.wait / timer.total if timer.total else float("nan")
            batch = next(iter(dm.train_dataloader()))
            steps = max(3, min(10, len(dm.train_set) // args.batch_size))
            bf16 = args.precision.startswith("bf16")
            base = compute_only(build_module(c, prepared), batch, steps, device, bf16)
            print(f"{name:<20}{pipe:>20.1f}{wait:>11.1%}{base:>25.1f}{pipe / base:>8.2f}")


if __name__ == "__main__":
    main()
