"""``lmpt export``: a run's classifier as one self-contained ONNX or TorchScript file (see :mod:`lmpt.deploy`).

The image tower is traced at the backbone's input size in float32; the class head is the run's
:class:`~lmpt.engine.use.inference.Classifier` weights (text features computed once: no text tower at inference),
followed by the run's calibration. Metadata (class names, thresholds, calibration, preprocessing, source, kind,
versions) travels in the file: ONNX metadata properties (each value JSON), or ``lmpt.json`` in the TorchScript
archive.

ONNX: torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) at opset 17, a dynamic batch
axis, checked with ``onnx.checker``; ``quantize="int8"`` then applies onnxruntime's dynamic quantization to the
MatMul/Gemm weights (int8 weights, activations quantized per batch at run time); ``quantize="int8-static"`` its
static QDQ quantization of the Conv/MatMul/Gemm layers (int8 weights per channel, uint8 activations with ranges
calibrated on images the run's way): a ResNet's convolutions too, which dynamic quantization leaves float32.
"""
from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
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
QUANTIZE = ("int8", "int8-static")
CALIBRATION_IMAGES = 64  # images that set the activation ranges of int8-static
OPSET = 17


def _check_out(out: Path, fmt: str, quantize: Optional[str], calibration_images: Optional[Sequence[str]]) -> None:
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if out.is_dir():
        raise UserError(f"cannot write {out}: it is a folder; give a file name, e.g. {out / ('model' + FORMATS[fmt][0])}")
    if out.suffix.lower() not in FORMATS[fmt]:
        raise UserError(f"--out {out}: a {fmt} file is named *{FORMATS[fmt][0]} (or give --format to match the name)")
    if quantize is not None and (quantize not in QUANTIZE or fmt != "onnx"):
        raise UserError(f"--quantize {quantize}: only --quantize {' or '.join(QUANTIZE)} with --format onnx is "
                        "available")
    if calibration_images and quantize != "int8-static":
        raise UserError("--calibration-images is for --quantize int8-static only")


def format_for(out: Union[str, Path]) -> str:
    """The export format a file name asks for (``.pt`` -> torchscript, anything else -> onnx)."""
    return "torchscript" if Path(out).suffix.lower() in FORMATS["torchscript"] else "onnx"


def onnx_bytes(module: torch.nn.Module, size: int, meta: dict[str, Any], quantize: Optional[str] = None,
               calibration: Optional[list[np.ndarray]] = None) -> bytes:
    """The exported ONNX model (checked), with ``meta`` in its metadata properties; int8 if asked (``calibration``:
    batches of preprocessed images for int8-static)."""
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
    elif quantize == "int8-static":
        model = quantize_int8_static(model, calibration or [])
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    model.producer_name, model.producer_version = "lmpt", __version__
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _quantized(model, quantize: Callable[[str, str, list[str]], None]):
    """``model`` run through an onnxruntime quantizer, called as ``quantize(src, dst, head)`` on files in a temporary
    folder, its warnings and log advice silenced (bench/export.py measures the result). ``head`` names the class
    head (the graph's last MatMul/Gemm: tiny, and its rounding is amplified by the calibration's slopes), which
    stays float32."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        head = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm")][-1:]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.disable(logging.WARNING)
            try:
                quantize(str(src), str(dst), head)
            finally:
                logging.disable(logging.NOTSET)
        return onnx.load(str(dst))


def quantize_int8(model):
    """onnxruntime's dynamic int8 quantization of the MatMul/Gemm weights of the image tower (activations quantized
    per batch at run time); the class head stays float32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    return _quantized(model, lambda src, dst, head: quantize_dynamic(
        src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=head))


def quantize_int8_static(model, batches: list[np.ndarray]):
    """onnxruntime's static QDQ quantization of the image tower's Conv/MatMul/Gemm layers: int8 weights per output
    channel, uint8 activations whose ranges come from ``batches`` (preprocessed images). The class head stays
    float32."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    def static(src: str, dst: str, head: list[str]) -> None:
        pre = dst + ".pre.onnx"
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        quantize_static(pre, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "MatMul", "Gemm"], nodes_to_exclude=head)

    return _quantized(model, static)


def calibration_batches(loaded, images: Optional[Sequence[str]] = None, n: int = CALIBRATION_IMAGES,
                        batch_size: int = 16) -> tuple[list[np.ndarray], str]:
    """``n`` images, evenly spaced over ``images`` (files, folders, globs, manifests) or else the run's training
    split, preprocessed the run's way, in batches; and a line saying where they came from."""
    from ...data.imagefile import load_image
    from ...data.images import transform_from_signature
    from ...predictor import collect_inputs
    from ..prepared import dataset_from_config

    if images:
        names = [str(i) for i in images]
        paths = collect_inputs(names).paths
        where = ", ".join(names) if len(names) <= 3 else f"{names[0]} and {len(names) - 1} more paths"
    else:
        try:
            paths, where = dataset_from_config(loaded.cfg).train.paths, "the run's training images"
        except UserError as exc:
            raise UserError(f"--quantize int8-static calibrates on the run's training images, which could not be "
                            f"read ({exc}); give --calibration-images with a folder of typical images") from None
    if not paths:
        raise UserError(f"--quantize int8-static: no images to calibrate on in {where}; give --calibration-images "
                        "with a folder of typical images")
    picked = [paths[int(i)] for i in np.unique(np.linspace(0, len(paths) - 1, min(n, len(paths))).round())]
    transform = transform_from_signature(preprocess_signature(loaded.meta, loaded.model.backbone))
    x = torch.stack([transform(load_image(p)) for p in picked]).numpy()
    return [x[i:i + batch_size] for i in range(0, len(x), batch_size)], f"{len(picked)} of {where}"


def export_run(run: Union[str, Path], out: Union[str, Path], weights: Optional[str] = None,
               fmt: Optional[str] = None, quantize: Optional[str] = None,
               calibration_images: Optional[Sequence[str]] = None) -> Path:
    """Write the classifier of ``run`` (a run folder or its classifier file) to ``out`` as ONNX (``.onnx``, the
    default) or TorchScript (``.pt``); ``quantize="int8"``: the ONNX model with int8 MatMul/Gemm weights;
    ``"int8-static"``: int8 Conv/MatMul/Gemm, activations calibrated on ``calibration_images`` (default: the
    run's training images)."""
    out = Path(out)
    fmt = fmt or format_for(out)
    _check_out(out, fmt, quantize, calibration_images)
    loaded = load_run(run, weights=weights, device="cpu")
    classifier = loaded.model
    if not classifier.calibrated:
        logger.warning("%s has no calibration (written by an older lmpt): the export uses sigmoid(logit) and "
                       "threshold 0.5", run)
    module = ExportModule(classifier).eval()
    module.visual.float()
    size = int(classifier.backbone.image_size)
    meta = validate_meta(export_meta(classifier, loaded.meta, str(run)), out)
    batches = None
    if quantize == "int8":
        meta["quantization"] = "int8 dynamic (onnxruntime, MatMul/Gemm weights)"
    elif quantize == "int8-static":
        batches, where = calibration_batches(loaded, calibration_images)
        meta["quantization"] = (f"int8 static QDQ (onnxruntime, Conv/MatMul/Gemm weights per channel, activations "
                                f"calibrated on {where})")
    if fmt == "onnx":
        atomic_write_bytes(out, onnx_bytes(module, size, meta, quantize, batches))
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
