"""bench.json (validated against ``schema.SCHEMA``), bench.md (one table for people) and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from .schema import validate


def _f(v, digits=1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _pct(v) -> str:
    """A fraction shown in percent (bench.json keeps fractions)."""
    return "-" if v is None else f"{100 * v:.2f}"


def caption(doc: dict) -> str:
    m, s = doc["machine"], doc["settings"]
    v = m["versions"]
    loads = "; ".join(f"{w['name']}: {w['examples']} texts, truncated at {w['max_length']} tokens"
                      for w in doc["workloads"])
    flags = f" [{' '.join(m['cpu_flags'])}]" if m.get("cpu_flags") else ""
    extra = "".join(f", {k} {v[k]}" for k in ("openvino", "nncf") if v.get(k))
    return (f"{m['cpu']}{flags} ({m['cores']} cores), {m['threads']} threads; bertrt {v['bertrt']}, onnxruntime "
            f"{v['onnxruntime']}, torch {v['torch']}, transformers {v['transformers']}{extra}; commit {m['commit']}. "
            f"Workloads - {loads}. Timed in {s['repeats']} interleaved rounds, each cut into short turns that go "
            f"round every variant ({s['latency_n']} texts one by one for batch-1 latency, one pass per batch size; "
            f"throughput is the median round); tokenization included everywhere (also shown alone); "
            f"{'every variant in its own process' if s.get('isolate') else 'all variants in one process'}. "
            f"Reference: {s['reference'] or 'each artifact’s source checkpoint'}.")


def markdown(doc: dict) -> str:
    sizes = doc["settings"]["batch_sizes"]
    metric = next((r["metric"] for r in doc["rows"] if r.get("metric")), "accuracy")
    head = (["workload", "variant", f"{metric} %", "agreement %", "p50 ms", "p90 ms", "p99 ms", "tokenize ms"]
            + [f"seq/s @{b}" for b in sizes] + ["peak MB", "size MB", f"× best peer seq/s @{sizes[-1]}",
                                                 "× best peer p50"])
    lines = [caption(doc), "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in doc["rows"]:
        if r["status"] != "timed":
            cells = [r["workload"], r["variant"], _pct(r.get("score")), _pct(r.get("agreement")),
                     f"{r['status']}: {r['reason']}"] + [""] * (len(head) - 5)
        else:
            vs = r.get("vs_best_peer") or {}
            cells = ([r["workload"], r["variant"], _pct(r["score"]), _pct(r["agreement"])]
                     + [_f(r["latency_ms"][k], 2) for k in ("p50", "p90", "p99")]
                     + [_f(r["tokenize_ms"]["p50"], 2)]
                     + [_f(r["throughput"][str(b)]["seq_per_s"]) for b in sizes]
                     + [_f(r["peak_mb"]), _f(r["size_mb"]),
                        _f(vs.get("throughput_ratio"), 2) + ("×" if vs else ""),
                        _f(vs.get("p50_ratio"), 2) + ("×" if vs else "")])
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plots(doc: dict, out: Path) -> list[str]:
    """latency.png (ms per batch against batch size) and accuracy_throughput.png, one panel per workload."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    sizes = doc["settings"]["batch_sizes"]
    names = [w["name"] for w in doc["workloads"]]
    written = []
    for fname, draw in (("latency.png", _latency_panel), ("accuracy_throughput.png", _accuracy_panel)):
        fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 4.8), squeeze=False)
        for ax, wl in zip(axes[0], names):
            rows = [r for r in doc["rows"] if r["workload"] == wl and r["status"] == "timed"]
            draw(ax, rows, sizes)
            ax.set_title(wl)
            ax.grid(alpha=0.3)
        fig.suptitle(f"{doc['machine']['cpu']}, {doc['machine']['threads']} threads", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        written.append(fname)
    return written


def _latency_panel(ax, rows, sizes):
    for r in rows:
        ms = [1000.0 * b / r["throughput"][str(b)]["seq_per_s"] for b in sizes]
        ax.plot(sizes, ms, marker="o", linestyle="-" if r["kind"] == "bertrt" else "--", label=r["variant"])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("ms per batch (tokenization included)")
    ax.legend(fontsize=7)


def _accuracy_panel(ax, rows, sizes):
    key = str(sizes[-1])
    for r in rows:
        ax.scatter(r["throughput"][key]["seq_per_s"], 100 * r["score"], marker="o" if r["kind"] == "bertrt" else "s")
        ax.annotate(r["variant"], (r["throughput"][key]["seq_per_s"], 100 * r["score"]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"sequences/s at batch {sizes[-1]}")
    ax.set_ylabel(f"{rows[0].get('metric', 'accuracy')} %" if rows else "task metric %")


def write_report(doc: dict, out: Path) -> None:
    doc["schema_validated"] = validate({k: v for k, v in doc.items() if k != "schema_validated"})
    out.mkdir(parents=True, exist_ok=True)
    doc["plots"] = plots(doc, out)
    (out / "bench.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    (out / "bench.md").write_text(markdown(doc), encoding="utf-8")
