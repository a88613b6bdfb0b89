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
