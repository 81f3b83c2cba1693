"""``bertrt ensemble``: several artifacts of one task -> one artifact whose graph averages their outputs.

The members' graphs are placed side by side in one ONNX graph that reads the same three inputs, and a few nodes
combine their outputs as ``bertrt.tasks.decode.ensemble_outputs`` says: classify, relation and ner average the
members' softmax probabilities (multilabel their sigmoids) and output the log of the mean as the logits, so that
decoding gives back the mean; embed averages the vectors (not re-normalised). The result is an ordinary artifact:
the runtime, predict, serve, evaluate and bench run it without knowing it is an ensemble.

Members may differ in size, pruning and precision, but must agree on everything that decides what they are asked
and what they answer: task, labels, tokenizer, max length, window stride, prompt, multilabel thresholds, embed
pooling. Before anything is written the ensemble is gated on the evaluation data (or the built-in sample): its
outputs must equal the mean of its members' own outputs (the fp32 gates), and with labels its task metric must not
fall more than ``max_drop`` points below its best member's (each member's metric is reported beside it).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bertrt.artifact import INPUT_NAMES, TASK_OUTPUTS, load_manifest, write_artifact
from bertrt.atomic import check_writable
from bertrt.errors import ExportError, ParityError
from bertrt.tasks.decode import ENSEMBLE_TASKS, PROB_FLOOR, SIGMOID_FLOOR, ensemble_outputs
from bertrt.tasks.predict import decode_options

from .config import ParityConfig

SHARED = ("task", "labels", "max_length", "doc_stride", "thresholds", "prompt")  # how inputs are asked and answered
SHARED_EMBED = ("pooling", "normalize")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def read_members(paths: list) -> list[tuple[Path, dict]]:
    """(path, verified manifest) of each member, or ``ExportError`` naming what they do not share."""
    from bertrt.tokenizer import fingerprint, load_tokenizer

    if len(paths) < 2:
        raise ExportError("an ensemble needs at least 2 member artifacts")
    members = [(Path(p), load_manifest(p, verify=True)) for p in paths]
    first, m0 = members[0]
    if m0["task"] not in ENSEMBLE_TASKS:
        raise ExportError(f"{first} is a {m0['task']} artifact; ensembles average probabilities or vectors, which "
                          f"{', '.join(ENSEMBLE_TASKS)} give (qa answers are spans chosen by logit sums)")
    prints = [m.get("tokenizer_fingerprint") or fingerprint(load_tokenizer(p / "tokenizer.json")) for p, m in members]
    for (path, m), fp in zip(members[1:], prints[1:]):
        if m.get("ensemble"):
            raise ExportError(f"{path} is itself an ensemble; list its members instead")
        if fp != prints[0]:
            raise ExportError(f"{path} uses another tokenizer than {first} (fingerprint {fp[:12]} vs "
                              f"{prints[0][:12]}); members must share the tokenizer, so that one encoding serves all")
        keys = SHARED + (SHARED_EMBED if m0["task"] == "embed" else ())
        differ = [k for k in keys if m.get(k) != m0.get(k)]
        if differ:
            what = "; ".join(f"{k}: {m0.get(k)!r} in {first}, {m.get(k)!r} in {path}" for k in differ)
            raise ExportError(f"the members differ in {', '.join(differ)} ({what}); an ensemble's members must share "
                              "task, labels and how inputs are encoded - export them alike")
    if m0.get("ensemble"):
        raise ExportError(f"{first} is itself an ensemble; list its members instead")
    return members


def merge_graphs(models: list, task: str):
    """One ONNX model: the members' graphs (names prefixed m0/, m1/, ...) on the shared inputs, combined."""
    import onnx
    from onnx import TensorProto, compose, helper

    def opsets(m):
        return {("" if o.domain == "ai.onnx" else o.domain): o.version for o in m.opset_import}

    versions = [opsets(m).get("") for m in models]
    if len(set(versions)) > 1:
        raise ExportError(f"the members were exported with different ONNX opsets ({versions}); export them with the "
                          "same --opset")
    domains: dict[str, int] = {}
    nodes, inits, infos, combined = [], [], [], {name: [] for name in TASK_OUTPUTS[task]}
    for i, m in enumerate(models):
        if m.functions:
            raise ExportError("a member's graph holds ONNX functions, which the ensemble cannot merge")
        if [x.name for x in m.graph.input] != INPUT_NAMES:
            raise ExportError(f"member {i} takes inputs {[x.name for x in m.graph.input]}, not {INPUT_NAMES}")
        g = compose.add_prefix(m, f"m{i}/", rename_inputs=False).graph
        nodes += g.node
        inits += g.initializer
        infos += g.value_info
        for name in combined:
            combined[name].append(f"m{i}/{name}")
        for d, v in opsets(m).items():
            domains[d] = max(domains.get(d, 0), v)
    n = len(models)
    const = [helper.make_tensor("ens/inv_n", TensorProto.FLOAT, [], [1.0 / n]),
             helper.make_tensor("ens/floor", TensorProto.FLOAT, [], [PROB_FLOOR]),
             helper.make_tensor("ens/lo", TensorProto.FLOAT, [], [SIGMOID_FLOOR]),
             helper.make_tensor("ens/hi", TensorProto.FLOAT, [], [1.0 - SIGMOID_FLOOR]),
             helper.make_tensor("ens/one", TensorProto.FLOAT, [], [1.0])]
    node = helper.make_node
    for name, parts in combined.items():
        if task == "embed":
            nodes += [node("Sum", parts, ["ens/sum"]), node("Mul", ["ens/sum", "ens/inv_n"], [name])]
            continue
        kind = "Sigmoid" if task == "multilabel" else "Softmax"
        probs = [f"ens/p{i}" for i in range(n)]
        nodes += [node(kind, [x], [p], **({} if kind == "Sigmoid" else {"axis": -1})) for x, p in zip(parts, probs)]
        nodes += [node("Sum", probs, ["ens/sum"]), node("Mul", ["ens/sum", "ens/inv_n"], ["ens/mean"])]
        if task == "multilabel":  # logit(p) = log p - log(1 - p)
            nodes += [node("Clip", ["ens/mean", "ens/lo", "ens/hi"], ["ens/c"]), node("Log", ["ens/c"], ["ens/lp"]),
                      node("Sub", ["ens/one", "ens/c"], ["ens/q"]), node("Log", ["ens/q"], ["ens/lq"]),
                      node("Sub", ["ens/lp", "ens/lq"], [name])]
        else:
            nodes += [node("Max", ["ens/mean", "ens/floor"], ["ens/c"]), node("Log", ["ens/c"], [name])]
    outputs = []
    for name in combined:
        out = onnx.ValueInfoProto()
        out.CopyFrom(next(o for o in models[0].graph.output if o.name == name))
        outputs.append(out)
    graph = helper.make_graph(nodes, "bertrt-ensemble", list(models[0].graph.input), outputs, inits + const,
                              value_info=infos)
    merged = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in domains.items()],
                               producer_name="bertrt-ensemble")
    merged.ir_version = max(m.ir_version for m in models)
    if merged.ByteSize() > 2 ** 31 - 1:
        raise ExportError("the merged graph exceeds ONNX's 2 GB single-file limit; ensemble fewer or smaller members")
    return merged


def build_ensemble(members: list, output, parity: ParityConfig | None = None, force: bool = False,
                   log=_stderr, progress: bool = True) -> dict:
    """Write the ensemble artifact of ``members`` (artifact paths) at ``output`` once its gates pass; return its
    manifest (``parity.final`` holds the gates, ``ensemble.members`` each member's metric)."""
    parity = parity or ParityConfig()
    output = Path(output)
    check_writable(output, force)
    read = read_members(members)

    import onnx
    import onnxruntime

    from bertrt.tokenizer import load_tokenizer

    from .evaldata import encode, read_examples
    from .parity import METRIC_NAMES, check, failures, format_gates, onnx_outputs, task_metric

    (first, m0), task = read[0], read[0][1]["task"]
    pattern = (m0.get("prompt") or {}).get("pattern")
    tok = load_tokenizer(first / "tokenizer.json")
    examples = read_examples(parity.eval_path, task, m0["labels"], parity.max_samples, pattern)
    pad = tok.token_to_id("[PAD]")
    batches = encode(examples, tok, task, m0["max_length"], parity.batch_size, 0 if pad is None else pad,
                     m0["labels"], m0.get("doc_stride"), decode_options(m0), pattern)
    data_name = parity.eval_path or "built-in English sample"
    log(f"ensemble of {len(read)} {task} artifacts; gates on {data_name} "
        f"({sum(len(b.feeds['input_ids']) for b in batches)} rows)")
    outs = [onnx_outputs(p / "model.onnx", batches, task, parity.device, progress) for p, _ in read]
    reference = [ensemble_outputs(task, list(per_member)) for per_member in zip(*outs)]
    with tempfile.TemporaryDirectory(prefix="bertrt-ensemble-") as tmp:
        merged = Path(tmp) / "model.onnx"
        onnx.save(merge_graphs([onnx.load(str(p / "model.onnx")) for p, _ in read], task), str(merged))
        got = onnx_outputs(merged, batches, task, parity.device, progress)
        report = check(task, "fp32", reference, got, batches, ParityConfig(**{**parity.to_dict(), "max_drop": 100.0}))
        report["gates"].pop("task")  # against the mean of its own members, the metric drop is 0 by construction
        report["against"] = "the mean of its members' outputs (their own ONNX graphs)"
        scores = [task_metric(task, o, batches) for o in outs]
        score = task_metric(task, got, batches)
        if score is None:
            report["gates"]["members"] = {"passed": True, "value": None,
                                          "rule": "not measured: no labelled --eval data"}
        else:
            drop = 100 * (max(scores) - score)
            report["gates"]["members"] = {"passed": bool(drop <= parity.max_drop), "value": round(drop, 4),
                                          "ensemble": score, "members": scores, "metric": METRIC_NAMES[task],
                                          "rule": f"{METRIC_NAMES[task]} at most {parity.max_drop:g} points below "
                                                  "the best member's"}
        report["passed"] = all(g["passed"] for g in report["gates"].values())
        if not report["passed"]:
            raise ParityError(f"the ensemble fails its gates: {failures(report)}. Nothing written"
                              + ("; its best member alone does better" if "members" in failures(report) else ""),
                              report)
        log(f"gates passed: {format_gates(report)}")
        precisions = sorted({m["precision"] for _, m in read})
        manifest = {k: m0.get(k) for k in SHARED + SHARED_EMBED}
        manifest.update(
            normalize=False,  # embed: the mean of the members' vectors, not re-normalised
            inputs=list(INPUT_NAMES), outputs=list(TASK_OUTPUTS[task]),
            precision=precisions[0] if len(precisions) == 1 else "mixed",
            padding="right" if any(m.get("padding") == "right" for _, m in read) else "any",
            ensemble={"combine": "mean of vectors" if task == "embed" else
                      "mean of probabilities (sigmoid)" if task == "multilabel" else "mean of probabilities (softmax)",
                      "members": [{"artifact": str(p.resolve()), "precision": m["precision"], "model": m.get("model"),
                                   "pruning": bool(m.get("pruning")), "source": m.get("source"),
                                   "pooling": m.get("pooling"), "normalize": m.get("normalize"),
                                   "files": {"model.onnx": m["files"]["model.onnx"]}, "score": s}
                                  for (p, m), s in zip(read, scores)]},
            parity={"data": data_name, "config": parity.to_dict(), "final": report},
            versions={"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                      "bertrt": _bertrt_version()},
            tokenizer_fingerprint=m0.get("tokenizer_fingerprint"))
        write_artifact(output, {"model.onnx": merged, "tokenizer.json": first / "tokenizer.json"}, manifest,
                       force=force)
    log(f"wrote {output} ({len(read)} members, {manifest['precision']})")
    return load_manifest(output)


def format_ensemble(path, m: dict) -> str:
    """The ensemble's metric beside each member's, as `bertrt ensemble` prints it."""
    from .parity import format_gates

    members = m["parity"]["final"]["gates"]["members"]
    metric = members.get("metric", "metric")
    lines = [f"artifact   {path}: ensemble of {len(m['ensemble']['members'])} {m['task']} members "
             f"({m['ensemble']['combine']}), {m['precision']}"]
    for i, x in enumerate(m["ensemble"]["members"]):
        shown = "-" if x["score"] is None else f"{100 * x['score']:.2f}%"
        lines.append(f"member {i}   {metric} {shown:>8}  {x['precision']:<14} {x['artifact']}")
    if members.get("ensemble") is not None:
        lines.append(f"ensemble   {metric} {100 * members['ensemble']:.2f}%")
    lines.append("gates      " + format_gates(m["parity"]["final"]))
    return "\n".join(lines)


def _bertrt_version() -> str:
    from bertrt import __version__

    return __version__
