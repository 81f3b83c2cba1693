"""Tiny artifacts for runtime tests, built without bertrt.converters (which is developed separately).

A 2-layer, hidden-32 ``Bert`` per task with a WordPiece tokenizer trained here, exported with the TorchScript
exporter (opset 17, dynamic batch and sequence axes, the output names of ``artifact.TASK_OUTPUTS``) and written with
``write_artifact``. Weights are drawn with a larger spread than BERT's init so that predictions differ between
inputs (labels, entities and spans are not all the same).

Also a script, for CI and bench: ``python tests/artifacts.py TASK OUT_DIR [--force]``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path

CORPUS = """The quick brown fox jumps over the lazy dog near the river bank.
Alice met Bob in Paris on Monday to talk about the new bank in London.
Markets fell sharply today as investors worried about interest rates.
The team won the final match after a late goal by their captain.
Researchers at the university found a new way to train small language models.
A café in Zürich serves crème brûlée and naïve questions get honest answers.
北京 上海 中文 测试 文本 东京 emoji 😀 🚀 text here
Who wrote the report? The report was written by the finance committee last year.
Where is the museum? The museum is in the old town, next to the cathedral.
"""
TASK_LABELS = {
    "classify": ["business", "sport", "tech"],
    "ner": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"],
    "qa": [],
    "embed": [],
}
MAX_LENGTH = 64


def build_artifact(task: str, out: str | os.PathLike, seed: int = 0, max_length: int = MAX_LENGTH,
                   force: bool = False) -> Path:
    import torch

    from bertrt.artifact import INPUT_NAMES, TASK_OUTPUTS, write_artifact
    from bertrt.model import Bert, BertConfig
    from bertrt.tokenizer import save_tokenizer, train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "corpus.txt").write_text(CORPUS * 3, encoding="utf-8")
        tok = train_tokenizer([tmp / "corpus.txt"], vocab_size=300, min_frequency=1, show_progress=False)
        save_tokenizer(tok, tmp / "tok")
        cfg = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_heads=[2, 2], ffn_sizes=[64, 64],
                         head_size=16, max_position_embeddings=max_length, task=task,
                         labels=TASK_LABELS[task], with_pooler=task in ("classify",), pooling="mean")
        torch.manual_seed(seed)
        model = Bert(cfg).eval()
        with torch.no_grad():  # a wider spread than BERT's init, so outputs vary between inputs
            for name, p in model.named_parameters():
                if p.dim() > 1:
                    p.normal_(0.0, 0.3)
        names = TASK_OUTPUTS[task]

        class Wrapper(torch.nn.Module):  # positional inputs, tuple outputs named as the artifact format wants
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids):
                out = self.m(input_ids, attention_mask, token_type_ids)
                return tuple(out[n] for n in names)

        ids = torch.tensor([[2, 10, 11, 12, 3], [2, 13, 3, 0, 0]])
        mask = (ids != 0).long()
        axes = {n: {0: "batch", 1: "sequence"} for n in INPUT_NAMES}
        for n in names:
            axes[n] = {0: "batch"} if n == "embedding" or task == "classify" else {0: "batch", 1: "sequence"}
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
            warnings.simplefilter("ignore")
            torch.onnx.export(Wrapper(model), (ids, mask, torch.zeros_like(ids)), str(tmp / "model.onnx"),
                              input_names=INPUT_NAMES, output_names=names, dynamic_axes=axes,
                              opset_version=17, dynamo=False)
        manifest = {"task": task, "labels": TASK_LABELS[task], "max_length": max_length, "inputs": INPUT_NAMES,
                    "outputs": names, "pooling": "mean" if task == "embed" else None, "normalize": False,
                    "precision": "fp32"}
        return write_artifact(out, {"model.onnx": tmp / "model.onnx", "tokenizer.json": tmp / "tok/tokenizer.json"},
                              manifest, force=force)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in TASK_LABELS:
        sys.exit(f"usage: python {sys.argv[0]} {{{','.join(TASK_LABELS)}}} OUT_DIR [--force]")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(build_artifact(sys.argv[1], sys.argv[2], force="--force" in sys.argv[3:]))
