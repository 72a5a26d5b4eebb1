"""``lmpt export``: a run's classifier as one self-contained ONNX or TorchScript file (see :mod:`lmpt.deploy`).

The image tower is traced at the backbone's input size in float32; the class head is the run's
:class:`~lmpt.engine.use.inference.Classifier` weights (text features computed once: no text tower at inference),
followed by the run's calibration. Metadata (class names, thresholds, calibration, preprocessing, source, kind,
versions) travels in the file: ONNX metadata properties (each value JSON), or ``lmpt.json`` in the TorchScript
archive.

ONNX: torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) at opset 17, a dynamic batch
axis, checked with ``onnx.checker``; ``quantize="int8"`` then applies onnxruntime's dynamic quantization to the
MatMul/Gemm weights (int8 weights, activations quantized per batch at run time).
"""
from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ... import __version__
from ...errors import UserError
from ...deploy.meta import EXPORT_VERSION, META_NAME, validate_meta
from ...io import atomic_write_bytes
from .inference import Classifier, load_run, preprocess_signature

logger = logging.getLogger(__name__)


class ExportModule(torch.nn.Module):
    """images ``[B, 3, s, s]`` -> ``(logits, calibrated probabilities)``, both ``[B, C]``."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.visual = classifier.backbone.model.visual
        cal = classifier.calibration
        self.register_buffer("weight", classifier.weight.detach().cpu().clone())
        self.register_buffer("bias", classifier.bias.detach().cpu().clone())
        # the calibration in float64, as the run folder computes it: fitted slopes can be large (|a| in the
        # thousands on near-separable classes), where float32 rounding of a*z+b alone moves p by 1e-4
        self.register_buffer("cal_a", torch.tensor(cal.a, dtype=torch.float64))
        self.register_buffer("cal_b", torch.tensor(cal.b, dtype=torch.float64))
        self.normalize = bool(classifier.normalize_features)  # False for a linear probe on raw features

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.visual(images)
        if self.normalize:
            features = features / features.norm(dim=-1, keepdim=True)
        logits = features @ self.weight.t() + self.bias
        return logits, torch.sigmoid(logits.double() * self.cal_a + self.cal_b).float()


def export_meta(classifier: Classifier, meta: dict[str, Any], source: str) -> dict[str, Any]:
    cal = classifier.calibration
    return {"export_version": EXPORT_VERSION, "lmpt_version": __version__, "source": source,
            "class_names": classifier.class_names, "thresholds": list(cal.thresholds),
            "calibration": cal.to_dict() if classifier.calibrated else None,
            "preprocess": preprocess_signature(meta, classifier.backbone),
            "backbone": meta.get("backbone"), "method": meta.get("method"), "kind": classifier.kind}


FORMATS = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".torchscript")}
QUANTIZE = ("int8",)
OPSET = 17


def _check_out(out: Path, fmt: str, quantize: Optional[str]) -> None:
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if out.is_dir():
        raise UserError(f"cannot write {out}: it is a folder; give a file name, e.g. {out / ('model' + FORMATS[fmt][0])}")
    if out.suffix.lower() not in FORMATS[fmt]:
        raise UserError(f"--out {out}: a {fmt} file is named *{FORMATS[fmt][0]} (or give --format to match the name)")
    if quantize is not None and (quantize not in QUANTIZE or fmt != "onnx"):
        raise UserError(f"--quantize {quantize}: only --quantize int8 with --format onnx is available")


def format_for(out: Union[str, Path]) -> str:
    """The export format a file name asks for (``.pt`` -> torchscript, anything else -> onnx)."""
    return "torchscript" if Path(out).suffix.lower() in FORMATS["torchscript"] else "onnx"


def onnx_bytes(module: torch.nn.Module, size: int, meta: dict[str, Any], quantize: Optional[str] = None) -> bytes:
    """The exported ONNX model (checked), with ``meta`` in its metadata properties; int8 if asked."""
    import onnx

    buf = io.BytesIO()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX form; the plain one does
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes; the input size is fixed
            torch.onnx.export(module, (torch.zeros(2, 3, size, size),), buf, dynamo=False, opset_version=OPSET,
                              input_names=["images"], output_names=["logits", "probabilities"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"},
                                            "probabilities": {0: "batch"}})
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    model = onnx.load_from_string(buf.getvalue())
    if quantize == "int8":
        model = quantize_int8(model)
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    model.producer_name, model.producer_version = "lmpt", __version__
    onnx.checker.check_model(model)
    return model.SerializeToString()


def quantize_int8(model):
    """onnxruntime's dynamic int8 quantization of the MatMul/Gemm weights of the image tower; the class head (the
    graph's last MatMul: tiny, and its rounding is amplified by the calibration's slopes) stays float32."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        head = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm")][-1:]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.disable(logging.WARNING)  # its advice to pre-process first; bench/export.py measures the result
            try:
                quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                                 op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=head)
            finally:
                logging.disable(logging.NOTSET)
        return onnx.load(str(dst))


def export_run(run: Union[str, Path], out: Union[str, Path], weights: Optional[str] = None,
               fmt: Optional[str] = None, quantize: Optional[str] = None) -> Path:
    """Write the classifier of ``run`` (a run folder or its classifier file) to ``out`` as ONNX (``.onnx``, the
    default) or TorchScript (``.pt``); ``quantize="int8"``: the ONNX model with int8 MatMul/Gemm weights."""
    out = Path(out)
    fmt = fmt or format_for(out)
    _check_out(out, fmt, quantize)
    loaded = load_run(run, weights=weights, device="cpu")
    classifier = loaded.model
    if not classifier.calibrated:
        logger.warning("%s has no calibration (written by an older lmpt): the export uses sigmoid(logit) and "
                       "threshold 0.5", run)
    module = ExportModule(classifier).eval()
    module.visual.float()
    size = int(classifier.backbone.image_size)
    meta = validate_meta(export_meta(classifier, loaded.meta, str(run)), out)
    if quantize:
        meta["quantization"] = f"{quantize} dynamic (onnxruntime, MatMul/Gemm weights)"
    if fmt == "onnx":
        atomic_write_bytes(out, onnx_bytes(module, size, meta, quantize))
        return out
    example = torch.zeros(2, 3, size, size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape checks inside the towers; the input size is fixed
        traced = torch.jit.trace(module, example, check_trace=False)
    buffer = io.BytesIO()  # serialised in memory: TorchScript's file writer aborts the process on a full disk
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(traced, buffer, _extra_files={META_NAME: json.dumps(meta)})
    atomic_write_bytes(out, buffer.getvalue())
    return out
