"""birdstack: bird species classification from whole-recording mel spectrograms.

The pipeline, stage by stage, mirrors the package layout::

    birdstack.data        ingest BirdCLEF / folder-per-species data, soundscape annotations,
                          selection rules, session-grouped splits, augmentations, DataModule
    birdstack.features    decoding, resampling, log-mel or BirdNET V2.4 features, cache, encodings
    birdstack.models      model registry (compact MobileNetV2, torchvision backbones, BirdNET heads)
    birdstack.training    LightningModule, distillation, checkpoints, ``train(config)``
    birdstack.evaluation  metrics, ``evaluate``, plots, the demo
    birdstack.sweeps      experiment grids (resumable), reports with paired intervals
    birdstack.inference   ``Predictor``, sliding windows, CSV / Raven / JSON writers, ONNX export,
                          ``model_info`` (what a checkpoint is)
    birdstack.cli         the ``birdstack`` command
"""

__version__ = "0.1.0"

_LAZY = {
    "Config": "birdstack.config",
    "prepare": "birdstack.data.prepare",
    "train": "birdstack.training.train",
    "create_model": "birdstack.models",
    "list_models": "birdstack.models",
    "Predictor": "birdstack.inference.predictor",
    "evaluate_checkpoint": "birdstack.evaluation.evaluate",
    "model_info": "birdstack.inference.model_info",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    """Top-level shortcuts, imported on first use (``birdstack.train``, ``birdstack.Predictor``)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'birdstack' has no attribute {name!r}")
