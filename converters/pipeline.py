"""load checkpoint -> export ONNX -> validate -> optimize -> (quantize | fp16) -> validate -> write artifact.

Every input is checked before any expensive work (output folder, task, head, tokenizer, eval data), the work
happens in a private temporary folder, and the artifact is written atomically only after its gates pass: a failed
gate, an error or a kill leaves nothing at the output path (or the previous artifact, untouched).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from bertrt.artifact import INPUT_NAMES, TASK_OUTPUTS, load_manifest, sha256_file, write_artifact
from bertrt.atomic import check_writable
from bertrt.checkpoint import finetune_record
from bertrt.tasks.predict import decode_options
from bertrt.errors import ArtifactError, ExportError, ParityError

from .config import ExportConfig, OpenVINOConfig, OptimizeConfig, ParityConfig, QuantizeConfig
from .evaldata import encode, read_examples


PROBE_BATCHES = 8  # batches the INT8 fallback's probes are measured on


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _weights_digest(checkpoint: Path) -> str | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (checkpoint / name).is_file():
            return sha256_file(checkpoint / name)
    return None


def prompt_of(checkpoint: Path, cfg: ExportConfig) -> dict | None:
    """The cloze prompt an artifact of ``checkpoint`` reads its texts through: the one ``cfg`` gives (zero-shot
    from a masked-LM), else the checkpoint's few-shot record; ``{"pattern", "verbalizer"}`` or None."""
    from bertrt.tasks.prompt import check_pattern, check_verbalizer

    prompt = ({"pattern": cfg.prompt, "verbalizer": cfg.verbalizer} if cfg.prompt is not None
              else finetune_record(checkpoint).get("prompt"))
    if prompt is None:
        return None
    check_pattern(prompt["pattern"])
    return {"pattern": prompt["pattern"], "verbalizer": check_verbalizer(prompt["verbalizer"])}


def load_for_export(checkpoint: Path, cfg: ExportConfig, prompt: dict | None = None):
    """(model in its artifact task with embed options applied, tokenizer) — or a typed error naming the fix.
    With ``prompt`` (``prompt_of``) the model is the checkpoint's masked-LM read as a classifier through it."""
    from bertrt.checkpoint import load_checkpoint, load_cloze, read_config
    from bertrt.errors import CheckpointError
    from bertrt.tokenizer import load_tokenizer

    from .export import prepare_model, resolve_task

    if not checkpoint.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {checkpoint}")
    ckpt_cfg, _ = read_config(checkpoint)
    tokenizer = load_tokenizer(checkpoint)
    if prompt is not None:
        model = load_cloze(checkpoint, prompt["verbalizer"], tokenizer).eval()
    else:
        model = prepare_model(load_checkpoint(checkpoint, task=resolve_task(ckpt_cfg.task, cfg.task)), cfg)
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        raise ExportError(f"the tokenizer in {checkpoint} has {tokenizer.get_vocab_size()} tokens but the model only "
                          f"{model.config.vocab_size} embeddings; they do not belong together")
    return model, tokenizer


def _batches(path, model, tokenizer, max_length, pcfg: ParityConfig, max_samples=None, stride=None, options=None,
             prompt: str | None = None):
    task = model.config.task
    examples = read_examples(path, task, model.config.labels, max_samples or pcfg.max_samples, prompt)
    pad = tokenizer.token_to_id("[PAD]")
    return encode(examples, tokenizer, task, max_length, pcfg.batch_size,
                  pad_id=model.config.pad_token_id if pad is None else pad, labels=model.config.labels, stride=stride,
                  options=options, prompt=prompt)


def export_artifact(checkpoint: str | os.PathLike, output: str | os.PathLike, export: ExportConfig | None = None,
                    optimize: OptimizeConfig | None = None, quantize: QuantizeConfig | None = None,
                    parity: ParityConfig | None = None, calib_path: str | None = None, force: bool = False,
                    log=_stderr, progress: bool = True, openvino: OpenVINOConfig | None = None) -> dict:
    """Build a verified artifact at ``output`` from ``checkpoint``; return its manifest.

    Raises a ``BertrtError`` subclass (nothing written) on bad input, a failed gate (``ParityError``, with the
    numbers) or a graph step that did not produce what it must.
    """
    export, optimize = export or ExportConfig(), optimize or OptimizeConfig()
    quantize, parity = quantize or QuantizeConfig(), parity or ParityConfig()
    checkpoint, output = Path(checkpoint), Path(output)
    if optimize.fp16 and quantize.mode != "none":
        raise ExportError("--fp16 and --quantize are alternatives (fp16 is for CUDA, INT8 for CPU); pick one")
    check_writable(output, force)  # before any expensive work, even the imports
    with_openvino = _wants_openvino(openvino or OpenVINOConfig(), optimize, parity, log)

    import onnx
    import onnxruntime
    import torch

    from bertrt.tokenizer import save_tokenizer

    from .export import export_onnx
    from .fallback import quantize_with_gates
    from .optimize import optimize as run_optimize
    from .parity import check, failures, format_gates, onnx_outputs, torch_outputs

    prompt = prompt_of(checkpoint, export)
    pattern = prompt and prompt["pattern"]
    model, tokenizer = load_for_export(checkpoint, export, prompt)
    mcfg, task = model.config, model.config.task
    trained = finetune_record(checkpoint)
    # the length and stride the model was fine-tuned with: the artifact then encodes as training and evaluation did
    max_length = export.max_length or trained.get("max_length") or mcfg.max_position_embeddings
    if max_length > mcfg.max_position_embeddings:
        raise ExportError(f"max_length {max_length} exceeds the model's {mcfg.max_position_embeddings} positions")
    stride = trained.get("doc_stride") if task in ("qa", "ner") else None
    thresholds = trained.get("thresholds") if task == "multilabel" else None
    batches = _batches(parity.eval_path, model, tokenizer, max_length, parity, stride=stride,
                       options=decode_options({"normalize": mcfg.normalize, "thresholds": thresholds}), prompt=pattern)
    calib = None
    if quantize.mode == "static":
        src = calib_path or parity.eval_path
        calib = [b.feeds for b in _batches(src, model, tokenizer, max_length, parity, quantize.calib_samples,
                                           prompt=pattern)]
    data_name = parity.eval_path or "built-in English sample"
    log(f"{task} model, {mcfg.num_layers} layers, hidden {mcfg.hidden_size}; gates on {data_name} "
        f"({sum(len(b.feeds['input_ids']) for b in batches)} examples)")

    ref = torch_outputs(model, batches, progress)
    gate_reports = {}
    with tempfile.TemporaryDirectory(prefix="bertrt-export-") as tmp:
        work = Path(tmp)
        log("exporting to ONNX")
        export_report = export_onnx(model, work / "export.onnx", export)
        raw_report = check(task, "fp32", ref, onnx_outputs(work / "export.onnx", batches, task), batches,
                           ParityConfig(**{**parity.to_dict(), "device": "cpu"}))
        gate_reports["export_fp32"] = raw_report
        if not raw_report["passed"]:
            raise ParityError(f"the exported fp32 graph differs from PyTorch: {failures(raw_report)}. Nothing "
                              "written; this is a bertrt bug, please report it", raw_report)
        current, opt_report = work / "export.onnx", {"enabled": False, "padding": "any"}
        if optimize.enabled:
            log("optimizing (ONNX Runtime BERT fusions)")
            opt_report = {"enabled": True, **run_optimize(current, work / "fused.onnx", mcfg,
                                                          OptimizeConfig(**{**optimize.to_dict(), "fp16": False}))}
            current = work / "fused.onnx"
            fused_report = check(task, "fp32", ref, onnx_outputs(current, batches, task), batches,
                                 ParityConfig(**{**parity.to_dict(), "device": "cpu"}))
            gate_reports["fused_fp32"] = fused_report
            if not fused_report["passed"]:
                raise ParityError(f"the fused fp32 graph differs from PyTorch: {failures(fused_report)}. Nothing "
                                  "written; export with --no-optimize", fused_report)
        final_report, quant_report, precision = gate_reports.get("fused_fp32", raw_report), None, "fp32"

        def evaluate(path: Path, precision: str, quick: bool = False) -> dict:
            n = PROBE_BATCHES if quick else len(batches)  # probes rank candidates; the gates use everything
            return check(task, precision, ref[:n], onnx_outputs(path, batches[:n], task, parity.device),
                         batches[:n], parity)

        if optimize.fp16:
            log("converting to fp16 (normalisations kept in fp32)")
            opt_report = {"enabled": True, **run_optimize(work / "export.onnx", work / "fp16.onnx", mcfg, optimize)}
            current, precision = work / "fp16.onnx", "fp16"
            final_report = evaluate(current, "fp16")
            if not final_report["passed"]:
                raise ParityError(f"the fp16 variant fails its gates: {failures(final_report)}. Nothing written; "
                                  "keep more ops in fp32 or export fp32", final_report)
        elif quantize.mode != "none":
            precision = f"int8-{quantize.mode}"
            log(f"quantizing ({quantize.mode} INT8, preset {quantize.preset})")
            current, quant_report, final_report = quantize_with_gates(
                current, work, quantize, lambda p, quick=False: evaluate(p, precision, quick), calib, log)
        gate_reports["final"] = final_report
        if precision == "fp32" and parity.device != "cpu":
            gate_reports["final"] = evaluate(current, "fp32")
        log(f"gates passed: {format_gates(final_report)}")
        log(f"decided by {final_report['decided_by']}")
        backends, extra_files = None, {}
        if with_openvino:
            from .openvino_variant import add_variant

            backends, extra_files = add_variant(work, current, precision, task, ref, batches, parity,
                                                calib or [b.feeds for b in batches], log,
                                                bf16=openvino.wants_bf16(precision.startswith("int8")))

        tok_dir = work / "tokenizer"
        tok_fp = save_tokenizer(tokenizer, tok_dir, max_length)
        pruned = len(set(mcfg.num_heads)) > 1 or len(set(mcfg.ffn_sizes)) > 1
        manifest = {
                "task": task, "labels": list(mcfg.labels), "max_length": max_length, "doc_stride": stride,
            "thresholds": thresholds, "prompt": prompt,
            "inputs": list(INPUT_NAMES),
            "outputs": list(TASK_OUTPUTS[task]),
            "pooling": mcfg.pooling if task == "embed" else None,
            "normalize": bool(mcfg.normalize) if task == "embed" else False,
            "precision": precision, "padding": opt_report.get("padding", "any"),
            "export": export_report | {"config": export.to_dict()},
            "optimization": opt_report | {"config": optimize.to_dict()},
            "quantization": quant_report and quant_report | {"config": quantize.to_dict()},
            "pruning": _pruning_summary(checkpoint, mcfg) if pruned else None,
            "parity": {"data": data_name, "config": parity.to_dict(), **gate_reports},
            "model": {"layers": mcfg.num_layers, "hidden_size": mcfg.hidden_size, "num_heads": mcfg.num_heads,
                      "ffn_sizes": mcfg.ffn_sizes, "vocab_size": mcfg.vocab_size},
            "source": {"checkpoint": str(checkpoint.absolute()), "weights_sha256": _weights_digest(checkpoint)},
            "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                         "onnxruntime": onnxruntime.__version__, "bertrt": _bertrt_version()},
            "tokenizer_fingerprint": tok_fp,
            **({"backends": backends} if backends else {}),
        }
        write_artifact(output, {"model.onnx": current, "tokenizer.json": tok_dir / "tokenizer.json", **extra_files},
                       manifest, force=force)
    log(f"wrote {output} ({precision})")
    return load_manifest(output)


def _wants_openvino(cfg: OpenVINOConfig, optimize: OptimizeConfig, parity: ParityConfig, log) -> bool:
    """Whether this export builds the OpenVINO variant (a CPU variant: not beside fp16 or gates on cuda)."""
    from .openvino_variant import available

    if cfg.mode == "off":
        if cfg.bf16:
            raise ExportError("--openvino-bf16 adds a candidate to the OpenVINO variant: not with --openvino off")
        return False
    cpu = not optimize.fp16 and parity.device == "cpu"
    if cfg.mode == "on" and not cpu:
        raise ExportError("--openvino on builds a CPU variant: not with --fp16 or --device cuda")
    if cfg.mode == "on" and not available():
        raise ExportError("--openvino on needs openvino and nncf: pip install 'bertrt[openvino]' (or --openvino off)")
    if cfg.mode == "auto" and cpu and not available():
        log("no OpenVINO variant: openvino and nncf are not installed (pip install 'bertrt[openvino]')")
    return cpu and available()


def _pruning_summary(checkpoint: Path, mcfg) -> dict:
    """What ``bertrt prune`` recorded (pruning.json), or at least the per-layer sizes."""
    from bertrt.checkpoint import read_pruning_record
    from bertrt.errors import CheckpointError

    summary = {"num_heads": mcfg.num_heads, "ffn_sizes": mcfg.ffn_sizes}
    try:
        record = read_pruning_record(checkpoint)
    except CheckpointError:
        record = "pruning.json unreadable"
    if record is not None:
        summary["prune"] = record
    return summary


def _bertrt_version() -> str:
    from bertrt import __version__

    return __version__


def verify_artifact(artifact: str | os.PathLike, eval_path: str | None = None, checkpoint: str | None = None,
                    parity: ParityConfig | None = None, log=_stderr, progress: bool = True) -> dict:
    """Re-check an artifact: sha256 of every file, then its gates against the PyTorch reference checkpoint.

    The reference is ``checkpoint`` or the one recorded in the manifest, which must still hold the same weights.
    Returns the fresh parity report; raises ``ParityError`` when a gate fails.
    """
    from bertrt.tokenizer import load_tokenizer

    from .parity import check, failures, format_gates, onnx_outputs, torch_outputs

    artifact = Path(artifact)
    manifest = load_manifest(artifact, verify=True)
    log(f"{artifact}: sha256 of {len(manifest['files'])} files verified")
    if manifest.get("ensemble"):
        raise ArtifactError(f"{artifact} is an ensemble: its files are verified, and its gates were against its "
                            "members; verify each member artifact against its checkpoint")
    recorded = manifest.get("source", {})
    ckpt = Path(checkpoint or recorded.get("checkpoint") or "")
    if not ckpt.is_dir():
        raise ArtifactError(f"the reference checkpoint {ckpt} is not available; pass --checkpoint with the checkpoint "
                            "the artifact was exported from")
    if checkpoint is None and recorded.get("weights_sha256") not in (None, _weights_digest(ckpt)):
        raise ArtifactError(f"the checkpoint at {ckpt} changed since the export (weights sha256 differs); pass "
                            "--checkpoint with the original one")
    stored = manifest.get("parity", {}).get("config", {})
    pcfg = parity or ParityConfig(**{**stored, "eval_path": eval_path})
    ecfg = ExportConfig(task=manifest["task"], pooling=manifest.get("pooling"), normalize=manifest.get("normalize"))
    prompt = manifest.get("prompt")
    model, _ = load_for_export(ckpt, ecfg, prompt)
    tokenizer = load_tokenizer(artifact / "tokenizer.json")
    batches = _batches(pcfg.eval_path, model, tokenizer, manifest["max_length"], pcfg,
                       stride=manifest.get("doc_stride"), options=decode_options(manifest),
                       prompt=prompt and prompt["pattern"])
    ref = torch_outputs(model, batches, progress)
    prec = manifest["precision"]
    report = check(manifest["task"], "fp32" if prec == "fp32" else ("fp16" if prec == "fp16" else "int8"), ref,
                   onnx_outputs(artifact / "model.onnx", batches, manifest["task"], pcfg.device, progress),
                   batches, pcfg)
    if not report["passed"]:
        raise ParityError(f"{artifact} fails its parity gates on {pcfg.eval_path or 'the built-in sample'}: "
                          f"{failures(report)}", report)
    log(f"gates passed: {format_gates(report)}")
    variant = manifest.get("backends", {}).get("openvino", {})
    if variant.get("passed"):
        from .openvino_variant import available, regate

        if not available():
            log("the OpenVINO variant is not re-gated: openvino and nncf are not installed (pip install "
                "'bertrt[openvino]')")
            return report
        ov = regate(artifact, variant, manifest["task"], ref, batches, pcfg)
        if not ov["passed"]:
            raise ParityError(f"{artifact}'s OpenVINO variant fails its parity gates on "
                              f"{pcfg.eval_path or 'the built-in sample'}: {failures(ov)}", ov)
        log(f"OpenVINO variant ({ov['inference_precision']} compute) gates passed: {format_gates(ov)}")
        report = report | {"openvino": ov}
    return report
