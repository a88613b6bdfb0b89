"""birdstack.models: a timm-style registry of CNNs sharing one interface.

    >>> from birdstack.models import create_model, list_models
    >>> "mobilenet_compact" in list_models()
    True
    >>> model = create_model("resnet18", num_classes=6, in_chans=10)
    >>> model.num_features, model.model_args["in_chans"]
    (512, 10)

Every model is a :class:`BirdstackNet`: ``forward(x[B, C, H, W]) -> logits[B, K]``,
``forward_features(x) -> [B, num_features]``, ``get_classifier()``,
``reset_classifier(K)`` and ``model_args`` (``create_model(**model.model_args)``
rebuilds the architecture).
"""

from birdstack.models import (  # noqa: F401
    birdnet_heads,
    efficientnet_lite,
    mobilenet_compact,
    torchvision_models,
)
from birdstack.models.adapt import adapt_first_conv, first_conv_name, fresh_first_conv
from birdstack.models.registry import (
    ADAPT_MODES,
    BirdstackNet,
    ModelArgs,
    ModelConfigError,
    create_model,
    create_model_from_config,
    is_model,
    list_models,
    model_entry,
    register_model,
)

__all__ = [
    "ADAPT_MODES",
    "BirdstackNet",
    "ModelArgs",
    "ModelConfigError",
    "adapt_first_conv",
    "create_model",
    "create_model_from_config",
    "first_conv_name",
    "fresh_first_conv",
    "is_model",
    "list_models",
    "model_entry",
    "register_model",
]
