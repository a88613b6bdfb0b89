"""Export a checkpoint's network to a self-describing ONNX file.

The graph maps model inputs ``[batch, C, n_mels, frames]`` (batch axis dynamic) to
logits ``[batch, K]``. The log-mel front end stays outside the graph (it runs in
:class:`birdstack.inference.predictor.Predictor`), so the file carries everything
else needed to use it in ``metadata_props``: ``birdstack.classes`` (JSON list),
``birdstack.preprocessing`` (JSON of :class:`~birdstack.config.Preprocessing`),
``birdstack.model`` (name and arguments) and ``birdstack.format``::

    >>> export_onnx("runs/demo/checkpoints/best.ckpt", "model.onnx")   # doctest: +SKIP
    >>> read_onnx_metadata("model.onnx")["classes"]                    # doctest: +SKIP
    ['acrocephalus_arundinaceus', ...]

``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript) is used, with the
legacy TorchScript exporter as a fallback; weights are kept inside the one file.

A head on BirdNET V2.4 (``birdnet_*`` models) exports the head only: its inputs are
BirdNET's features ``[batch, 7546]`` (1024-d embedding, then the 6,522 logits, of
one 3 s window or pooled over a recording's windows). BirdNET itself still runs in
LiteRT (``birdstack[birdnet]``) at inference; ``birdstack.backbone`` in the metadata
names the model file and its sha256, and :class:`~birdstack.inference.predictor.Predictor`
refuses a different one.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from birdstack.config import Preprocessing, from_dict, to_dict
from birdstack.utils import BadInputError, BirdstackError, atomic_path, get_logger

log = get_logger("export")

ONNX_FORMAT = "birdstack-onnx/1"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18


@contextlib.contextmanager
def _quiet_exporter_logs() -> Any:
    """The exporter's optimiser logs every rewrite at INFO: keep those out of the CLI."""
    names = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._dynamo")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _export_graph(net: Any, example: Any, path: Path, opset: int) -> str:
    """Write the bare ONNX graph of ``net`` to ``path``; returns which exporter worked."""
    import torch

    errors: list[str] = []
    try:
        batch = torch.export.Dim("batch", min=1, max=65536)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            _quiet_exporter_logs(),
        ):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                net,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"x": {0: batch}},
                opset_version=opset,
                dynamo=True,
                optimize=True,
                verbose=False,
            )
        program.save(str(path), external_data=False)
        return "dynamo"
    except Exception as e:  # noqa: BLE001 - fall back to the TorchScript exporter
        errors.append(f"dynamo exporter: {type(e).__name__}: {str(e).splitlines()[0]}")
        log.debug("dynamo ONNX export failed, trying the legacy exporter: %s", e)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
        return "torchscript"
    except Exception as e:  # noqa: BLE001
        errors.append(f"legacy exporter: {type(e).__name__}: {str(e).splitlines()[0]}")
    raise BirdstackError("ONNX export failed: " + "; ".join(errors))


def export_onnx(
    checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], opset: int = DEFAULT_OPSET
) -> Path:
    """Export a birdstack checkpoint to ``out`` (written atomically); returns ``out``."""
    import onnx
    import torch

    from birdstack.training.checkpoint import build_model_from_checkpoint, load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    net, info = build_model_from_checkpoint(ckpt)
    net = net.float().eval()
    example = torch.zeros(2, *info.preprocessing.input_shape())
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "graph.onnx"
        exporter = _export_graph(net, example, raw, opset)
        model = onnx.load(str(raw), load_external_data=True)
    meta = {
        "birdstack.format": ONNX_FORMAT,
        "birdstack.classes": json.dumps(info.classes),
        "birdstack.preprocessing": json.dumps(to_dict(info.preprocessing)),
        "birdstack.model": json.dumps({"name": info.model_name, "args": info.model_args}),
        "birdstack.scientific_names": json.dumps(scientific_names_from_checkpoint(ckpt)),
        "birdstack.source": Path(checkpoint).name,
        "birdstack.backbone": json.dumps(ckpt["birdstack"].get("backbone") or {}),
        "birdstack.birdnet_map": json.dumps(ckpt["birdstack"].get("birdnet_map") or {}),
        # multi-label exports: sigmoid scores and the per-class thresholds ("null": softmax)
        "birdstack.thresholds": json.dumps(
            ckpt["birdstack"].get("thresholds")
            if ckpt["birdstack"].get("task") == "multilabel"
            else None
        ),
        "birdstack.exporter": exporter,
    }
    del model.metadata_props[:]
    for k, v in meta.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = k, v
    model.producer_name = "birdstack"
    onnx.checker.check_model(model)
    with atomic_path(out, suffix=".onnx") as tmp_out:
        onnx.save_model(model, str(tmp_out))
    log.info("exported %s -> %s (%s exporter)", checkpoint, out, exporter)
    return out


def scientific_names_from_checkpoint(ckpt: dict[str, Any]) -> dict[str, str]:
    """A label -> scientific name mapping stored in the checkpoint, if any (else ``{}``).

    Looked up under ``birdstack.scientific_names`` (a mapping) in the checkpoint.
    """
    names = ckpt.get("birdstack", {}).get("scientific_names") or {}
    return {str(k): str(v) for k, v in dict(names).items()} if isinstance(names, dict) else {}


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Metadata of a birdstack ONNX file: classes, preprocessing, model, scientific_names."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise BadInputError(p, "ONNX file not found")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # noqa: BLE001
        raise BadInputError(p, f"not a readable ONNX file ({type(e).__name__})") from None
    return parse_onnx_metadata({m.key: m.value for m in model.metadata_props}, p)


def parse_onnx_metadata(props: dict[str, str], path: str | os.PathLike[str]) -> dict[str, Any]:
    """:func:`read_onnx_metadata` from the file's ``metadata_props`` as a dict.

    ONNX Runtime gives them too (``session.get_modelmeta().custom_metadata_map``), so
    a predictor reads them without the ``onnx`` package.
    """
    if props.get("birdstack.format") != ONNX_FORMAT:
        raise BadInputError(Path(path), "not a birdstack ONNX export (no birdstack metadata)")
    return {
        "classes": json.loads(props["birdstack.classes"]),
        "preprocessing": from_dict(Preprocessing, json.loads(props["birdstack.preprocessing"])),
        "model": json.loads(props["birdstack.model"]),
        "scientific_names": json.loads(props.get("birdstack.scientific_names", "{}")),
        "backbone": json.loads(props.get("birdstack.backbone", "{}")),
        "birdnet_map": json.loads(props.get("birdstack.birdnet_map", "{}")),
        "thresholds": json.loads(props.get("birdstack.thresholds", "null")),
        "source": props.get("birdstack.source"),  # the checkpoint it was exported from
    }
