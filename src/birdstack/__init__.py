"""birdstack: bird species classification from whole-recording mel spectrograms.

The pipeline, stage by stage, mirrors the package layout::

    birdstack.data        ingest BirdCLEF / folder-per-species data, selection rules, splits
    birdstack.features    decoding, resampling, log-mel spectrograms, feature cache, encodings
    birdstack.models      model registry (compact MobileNetV2, torchvision backbones, ...)
    birdstack.training    LightningModule, DataModule, ``train(config)``
    birdstack.evaluation  metrics, reports, sweeps
    birdstack.inference   ``Predictor``, sliding windows, CSV / Raven / JSON writers, ONNX export
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
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    """Top-level shortcuts, imported on first use (``birdstack.train``, ``birdstack.Predictor``)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'birdstack' has no attribute {name!r}")
