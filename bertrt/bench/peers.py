"""The peers a user would pick instead of bertrt, loaded from the reference checkpoint with transformers:
PyTorch eager fp32, bf16 autocast, dynamic INT8 (``torch.ao.quantization.quantize_dynamic`` on Linear), and ONNX
Runtime on a plain export (``torch.onnx.export(dynamo=False)``, no fusion) in fp32 and in ORT's default dynamic
INT8 as Optimum's ``AutoQuantizationConfig.avx512_vnni(is_static=False)`` applies it; and OpenVINO on the same
plain export (``openvino.convert_model``) in fp32 and NNCF post-training INT8 (``nncf.quantize`` with the
transformer preset, calibrated on up to ``OV_CALIB_TEXTS`` of the bench's own texts: a user would calibrate on
training data, so this favours the peer), compiled as a user gets it (OpenVINO's default inference precision, which
is bf16 on CPUs that have it) with the bench's threads and one stream. The OpenVINO peers run when openvino and
nncf are installed (the ``bench`` extra).

Every peer tokenizes with transformers' fast tokenizer inside the timed region and runs the batches bertrt's
runtime would (same length bucketing, same padding multiple), with the same thread count.
"""

from __future__ import annotations

import warnings
from pathlib import Path


from ..tasks.encode import pad_rows, padded_length, plan_batches

PEERS = ("torch-fp32", "torch-bf16", "torch-int8", "ort-fp32", "ort-int8", "ov-fp32", "ov-int8")
NAMES = {"torch-fp32": "PyTorch eager fp32", "torch-bf16": "PyTorch bf16 autocast",
         "torch-int8": "PyTorch dynamic INT8", "ort-fp32": "ONNX Runtime plain export fp32",
         "ort-int8": "ONNX Runtime dynamic INT8 (Optimum recipe)", "ov-fp32": "OpenVINO plain export",
         "ov-int8": "OpenVINO NNCF INT8"}
PRECISION = {"torch-fp32": "fp32", "torch-bf16": "bf16", "torch-int8": "int8-dynamic", "ort-fp32": "fp32",
             "ort-int8": "int8-dynamic", "ov-fp32": "fp32 (default hint)", "ov-int8": "int8-nncf"}
OV_CALIB_TEXTS = 300  # NNCF's default subset size


def installed_peers() -> tuple[str, ...]:
    """The peers this environment can run: the OpenVINO ones need openvino and nncf."""
    import importlib.util

    ov = all(importlib.util.find_spec(m) is not None for m in ("openvino", "nncf"))
    return tuple(p for p in PEERS if ov or not p.startswith("ov-"))


class _Peer:
    kind = "peer"

    def __init__(self, key: str, checkpoint: Path, max_length: int):
        import transformers
        from transformers import PreTrainedTokenizerFast

        transformers.logging.disable_progress_bar()  # its weight-loading bars would break the bench's own bar
        transformers.logging.set_verbosity_error()

        self.key, self.name, self.precision = key, NAMES[key], PRECISION[key]
        self.max_length = max_length
        self.tok = PreTrainedTokenizerFast(tokenizer_file=str(checkpoint / "tokenizer.json"))
        pad = self.tok.convert_tokens_to_ids("[PAD]")
        self.pad_id = pad if isinstance(pad, int) and pad >= 0 else 0

    def tokenize(self, texts: list):
        if all(isinstance(t, str) for t in texts):
            return self.tok(texts, truncation=True, max_length=self.max_length, return_token_type_ids=True)
        pairs = [(t, None) if isinstance(t, str) else (t["text"], t.get("text_pair")) for t in texts]
        if any(b is None for _, b in pairs):
            raise ValueError("a workload mixes single texts and pairs")
        return self.tok([a for a, _ in pairs], [b for _, b in pairs], truncation=True, max_length=self.max_length,
                        return_token_type_ids=True)

    def _batches(self, texts: list[str], batch_size: int):
        enc = self.tokenize(texts)
        ids, types = enc["input_ids"], enc["token_type_ids"]
        for batch in plan_batches([len(x) for x in ids], batch_size * self.max_length, batch_size, self.max_length):
            T = padded_length(max(len(ids[i]) for i in batch), self.max_length)
            yield batch, pad_rows([ids[i] for i in batch], [types[i] for i in batch], self.pad_id, T)

    def predict(self, texts: list, batch_size: int) -> list[dict]:
        """{"label"} per text (the decision the bench gate compares; a peer's own scores are not needed)."""
        out: list = [None] * len(texts)
        for batch, feeds in self._batches(texts, batch_size):
            for i, k in zip(batch, self._logits(feeds).argmax(-1).tolist()):
                out[i] = {"label": self.labels[k]}
        return out


class TorchPeer(_Peer):
    def __init__(self, key: str, checkpoint: Path, max_length: int, threads: int):
        import torch
        from transformers import BertForSequenceClassification

        super().__init__(key, checkpoint, max_length)
        torch.set_num_threads(threads)
        self.torch = torch
        model = BertForSequenceClassification.from_pretrained(str(checkpoint)).eval()
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        self.size_mb = round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2 ** 20, 2)
        if key == "torch-int8":
            with warnings.catch_warnings():  # torch's deprecation notice for quantized tensors
                warnings.simplefilter("ignore")
                model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
            self.size_mb = round(_quantized_bytes(model) / 2 ** 20, 2)
        self.model = model

    def _logits(self, feeds):
        torch = self.torch
        inputs = {k: torch.from_numpy(v) for k, v in feeds.items()}
        with torch.inference_mode():
            if self.key == "torch-bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return self.model(**inputs).logits.float().numpy()
            return self.model(**inputs).logits.numpy()


def _quantized_bytes(model) -> int:
    """Weight bytes of a dynamically quantized model: int8 packed Linear weights plus everything left in fp32."""
    import torch

    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, torch.ao.nn.quantized.dynamic.Linear):
            w = m.weight()
            total += w.numel() + (m.bias().numel() * 4 if m.bias() is not None else 0)
    return total


class OrtPeer(_Peer):
    def __init__(self, key: str, checkpoint: Path, max_length: int, threads: int, work: Path):
        from ..runtime.session import Session

        super().__init__(key, checkpoint, max_length)
        fp32, int8 = plain_export(checkpoint, work)
        path = int8 if key == "ort-int8" else fp32
        # bertrt's thread settings, for fairness, but ONNX Runtime's own graph optimizers as a user gets them
        self.session = Session(str(path), device="cpu", threads=threads, ort_defaults=True)
        self.size_mb = round(path.stat().st_size / 2 ** 20, 2)
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(str(checkpoint))
        self.labels = [cfg.id2label[i] for i in range(cfg.num_labels)]

    def _logits(self, feeds):
        return self.session.run(feeds)["logits"]


def plain_export(checkpoint: Path, work: Path) -> tuple[Path, Path]:
    """transformers' model through the TorchScript exporter as-is (opset 17, no fusion), and ORT's dynamic INT8 of
    it with Optimum's avx512_vnni(is_static=False) settings. Built once per work folder."""
    fp32, int8 = work / "plain-fp32.onnx", work / "plain-int8.onnx"
    if fp32.is_file() and int8.is_file():
        return fp32, int8
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import BertForSequenceClassification

    work.mkdir(parents=True, exist_ok=True)
    model = BertForSequenceClassification.from_pretrained(str(checkpoint)).eval()

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    ids = torch.ones((2, 16), dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Logits(model), (ids, ids, torch.zeros_like(ids)), str(fp32), dynamo=False,
                          opset_version=17, input_names=names, output_names=["logits"],
                          dynamic_axes={n: {0: "b", 1: "t"} for n in names} | {"logits": {0: "b"}})
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=False, reduce_range=False,
                     op_types_to_quantize=["MatMul"])
    return fp32, int8


class OpenVINOPeer(_Peer):
    def __init__(self, key: str, checkpoint: Path, max_length: int, threads: int, work: Path, texts: list):
        import openvino as ov
        from transformers import AutoConfig

        super().__init__(key, checkpoint, max_length)
        xml = openvino_export(self, checkpoint, work, key == "ov-int8", texts)
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(xml)), "CPU",
                                           {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                                            "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()
        self.names = [p.get_any_name() for p in self.compiled.inputs]
        self.size_mb = round((xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 2 ** 20, 2)
        cfg = AutoConfig.from_pretrained(str(checkpoint))
        self.labels = [cfg.id2label[i] for i in range(cfg.num_labels)]

    def _logits(self, feeds):
        res = self.request.infer({n: feeds[n] for n in self.names})
        return res[self.compiled.outputs[0]]


def openvino_export(peer: _Peer, checkpoint: Path, work: Path, int8: bool, texts: list) -> Path:
    """The plain export converted to OpenVINO IR, and its NNCF INT8 (calibrated on the first ``OV_CALIB_TEXTS``
    texts, batches of 8 as the peer runs them). Built once per work folder."""
    import contextlib
    import logging
    import sys

    import openvino as ov

    xml = work / ("plain-nncf.xml" if int8 else "plain-ov.xml")
    if xml.is_file():
        return xml
    model = ov.convert_model(str(plain_export(checkpoint, work)[0]))
    if int8:
        import nncf

        nncf.set_log_level(logging.ERROR)
        feeds = [f for _, f in peer._batches(texts[:OV_CALIB_TEXTS], 8)]
        with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars
            model = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(feeds))
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


def make_peer(key: str, checkpoint: str | Path, max_length: int, threads: int, work: Path, texts: list = ()):
    """A loaded peer; ``texts``: the workload (the NNCF peer calibrates on its first texts)."""
    checkpoint = Path(checkpoint)
    if key.startswith("torch"):
        return TorchPeer(key, checkpoint, max_length, threads)
    if key.startswith("ov"):
        return OpenVINOPeer(key, checkpoint, max_length, threads, work, list(texts))
    return OrtPeer(key, checkpoint, max_length, threads, work)
