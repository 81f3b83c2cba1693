"""The training loop: exact accumulation, exact resume, schedule, decay groups, corrupt checkpoints refused."""

import json

import pytest
import torch
import torch.nn.functional as F

from bertrt.errors import CheckpointError, OutputExistsError
from bertrt.model import Bert, BertConfig
from bertrt.train.loop import EpochBatches, TrainConfig, lr_factor, make_optimizer, train


def tiny(dropout=0.1, seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_heads=[2, 2], ffn_sizes=[64, 64], head_size=16,
                     max_position_embeddings=32, task="classify", labels=["a", "b", "c"],
                     hidden_dropout=dropout, attention_dropout=dropout)
    return Bert(cfg)


def items(n=20, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(3, 12, (1,), generator=g))
        out.append((torch.randint(5, 50, (length,), generator=g), int(torch.randint(0, 3, (1,), generator=g))))
    return out


def collate(batch):
    T = max(len(x) for x, _ in batch)
    ids = torch.zeros(len(batch), T, dtype=torch.long)
    mask = torch.zeros(len(batch), T, dtype=torch.long)
    for i, (x, _) in enumerate(batch):
        ids[i, :len(x)], mask[i, :len(x)] = x, 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([y for _, y in batch])}


def loss_fn(model, batch):
    logits = model(batch["input_ids"], batch["attention_mask"])["logits"]
    return F.cross_entropy(logits.float(), batch["labels"], reduction="sum"), len(batch["labels"])


def test_accumulation_equals_one_big_batch(tmp_path):
    data = items(12)
    # micro-batches of 3 and 1 (uneven on purpose): a per-micro-batch mean would weight them wrongly
    small = [collate(data[0:3]), collate(data[3:4])]
    big = [collate(data[0:4])]
    cfg = dict(lr=1e-3, max_steps=1, clip=None, progress=False)
    r_small = train(tiny(0.0), small, loss_fn, TrainConfig(grad_accum=2, **cfg), tmp_path / "a")
    r_big = train(tiny(0.0), big, loss_fn, TrainConfig(grad_accum=1, **cfg), tmp_path / "b")
    assert r_small.history[0]["loss"] == pytest.approx(r_big.history[0]["loss"], rel=1e-6)
    # grad_norm is measured on the normalised gradient, before the (scale-invariant) Adam step
    assert r_small.history[0]["grad_norm"] == pytest.approx(r_big.history[0]["grad_norm"], rel=1e-5)
    # and the naive alternative (mean of the micro-batch means) is measurably different here
    m = tiny(0.0)
    with torch.no_grad():
        naive = sum(loss_fn(m, b)[0] / loss_fn(m, b)[1] for b in small) / 2
        exact = loss_fn(m, big[0])[0] / 4
    assert abs(float(naive) - float(exact)) > 1e-3


def run(tmp_path, name, steps=6, crash_at=None, resume=False, save_every=3):
    model = tiny(0.1)
    calls = {"n": 0}

    def maybe_crash(m, b):
        calls["n"] += 1
        if crash_at is not None and calls["n"] > crash_at:
            raise RuntimeError("simulated kill")
        return loss_fn(m, b)

    data = EpochBatches(items(10), batch_size=2, collate=collate, seed=3)  # 5 batches: 3 steps/epoch at accum 2
    cfg = TrainConfig(lr=3e-3, max_steps=steps, warmup=2, grad_accum=2, save_every=save_every, seed=7,
                      progress=False)
    return train(model, data, maybe_crash, cfg, tmp_path / name, resume=resume)


def test_resume_gives_exactly_the_same_losses(tmp_path):
    full = run(tmp_path, "full")
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(tmp_path, "killed", crash_at=4 * 2)  # dies in step 5; the last checkpoint is step 3's
    state = json.loads((tmp_path / "killed/checkpoint/train_state/state.json").read_text())
    assert state["step"] == 3 and state["epoch"] == 0 and state["position"] == 5
    resumed = run(tmp_path, "killed", resume=True)
    assert [h["step"] for h in resumed.history] == [4, 5, 6]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history[3:]]  # bit-exact
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in full.history[3:]]
    from safetensors.torch import load_file
    wa = load_file(str(tmp_path / "full/checkpoint/train_state/model.safetensors"))
    wb = load_file(str(tmp_path / "killed/checkpoint/train_state/model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert len(full.history) == 6 and full.history[3]["epoch"] == 1  # the run crossed an epoch boundary


def test_corrupt_or_partial_checkpoint_is_refused(tmp_path):
    run(tmp_path, "r", steps=2, save_every=0)
    ts = tmp_path / "r/checkpoint/train_state"
    opt = ts / "optimizer.safetensors"
    good = opt.read_bytes()
    opt.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        run(tmp_path, "r", steps=4, resume=True)
    opt.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="sha256"):
        run(tmp_path, "r", steps=4, resume=True)
    opt.write_bytes(good)
    (ts / "state.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        run(tmp_path, "r", steps=4, resume=True)
    with pytest.raises(OutputExistsError):
        run(tmp_path, "r", steps=4)  # an existing run is never overwritten silently
    with pytest.raises(CheckpointError, match="nothing to resume"):
        run(tmp_path, "fresh", resume=True)


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path):
    run(tmp_path, "r", steps=2, save_every=0)
    before = (tmp_path / "r/checkpoint/train_state/state.json").read_text()

    def broken_save(model, directory):
        (directory / "half-written").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError):
        train(tiny(), [collate(items(4))], loss_fn, TrainConfig(max_steps=1, progress=False), tmp_path / "r",
              save_fn=broken_save, force=True)
    assert (tmp_path / "r/checkpoint/train_state/state.json").read_text() == before
    assert not (tmp_path / "r/checkpoint/half-written").exists()
    assert [p.name for p in (tmp_path / "r").iterdir() if p.name.startswith(".checkpoint")] == []


def test_schedule_and_decay_groups():
    # warm-up over 4 steps then linear decay to 0 at step 10
    f = [lr_factor(s, s / 10, 4, 10) for s in range(10)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == pytest.approx(1.0) and f[9] == pytest.approx(1 / 6) and f[7] == pytest.approx(0.5)
    assert lr_factor(0, 0.5, 0.0, None) == pytest.approx(0.5)  # budget-only run: decay by elapsed time
    opt = make_optimizer(tiny(), TrainConfig(max_steps=1, weight_decay=0.1))
    decayed = {p.ndim for p in opt.param_groups[0]["params"]}
    assert opt.param_groups[0]["weight_decay"] == 0.1 and decayed == {2}
    assert opt.param_groups[1]["weight_decay"] == 0.0 and {p.ndim for p in opt.param_groups[1]["params"]} == {1}


def test_metrics_and_eval_logged(tmp_path):
    r = train(tiny(), [collate(items(4))], loss_fn,
              TrainConfig(max_steps=4, eval_every=2, log_every=1, progress=False), tmp_path / "m",
              eval_fn=lambda m: {"constant": 1.5})
    assert [e["step"] for e in r.evals] == [2, 4]
    lines = [json.loads(x) for x in (tmp_path / "m/metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["kind"] == "train"] == [1, 2, 3, 4]
    assert [x["constant"] for x in lines if x["kind"] == "eval"] == [1.5, 1.5]
    from bertrt.checkpoint import load_checkpoint
    m = load_checkpoint(tmp_path / "m/checkpoint")  # the checkpoint is an ordinary HF-style directory
    assert m.config.labels == ["a", "b", "c"]


def test_metrics_start_over_with_force_and_do_not_repeat_after_resume(tmp_path):
    def steps_logged(name):
        lines = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [x["step"] for x in lines if x["kind"] == "train"]

    cfg = dict(lr=1e-3, log_every=1, save_every=2, progress=False)
    data = [collate(items(4))]
    train(tiny(), data, loss_fn, TrainConfig(max_steps=3, **cfg), tmp_path / "f")
    train(tiny(), data, loss_fn, TrainConfig(max_steps=2, **cfg), tmp_path / "f", force=True)
    assert steps_logged("f") == [1, 2]  # the replaced run's records are gone

    def dies_in_step_4(m, b, calls={"n": 0}):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated kill")
        return loss_fn(m, b)

    with pytest.raises(RuntimeError):
        train(tiny(), data, dies_in_step_4, TrainConfig(max_steps=5, **cfg), tmp_path / "k")
    with open(tmp_path / "k/metrics.jsonl", "a") as f:
        f.write('{"step": 3, "kind": "tr')  # a line torn by the kill
    train(tiny(), data, loss_fn, TrainConfig(max_steps=5, **cfg), tmp_path / "k", resume=True)
    assert steps_logged("k") == [1, 2, 3, 4, 5]  # step 3 was logged before the kill and again after: kept once



def test_callbacks_run_in_order_and_can_stop_the_run(tmp_path):
    from bertrt.train.callbacks import Callback

    class Probe(Callback):
        def __init__(self):
            self.calls = []

        def on_train_start(self, loop):
            self.calls.append(("start", loop.step))

        def on_gradients(self, loop):
            self.calls.append(("grads", loop.step))
            return {"probe": 1.5}

        def on_optimizer_step(self, loop):
            # gradients are still there: AdaLoRA-style callbacks read them here
            assert any(p.grad is not None for p in loop.model.parameters())
            self.calls.append(("opt", loop.step))

        def on_step_end(self, loop, record):
            self.calls.append(("end", record["step"]))

        def should_stop(self, loop):
            return loop.step == 2

        def on_train_end(self, loop):
            self.calls.append(("train_end", loop.step))

    probe = Probe()
    data = EpochBatches(items(8), batch_size=2, collate=collate, seed=3)
    r = train(tiny(0.0), data, loss_fn, TrainConfig(lr=1e-3, max_steps=10, progress=False), tmp_path / "r",
              callbacks=[probe])
    assert r.step == 2 and r.stopped_early and [h["probe"] for h in r.history] == [1.5, 1.5]
    assert probe.calls == [("start", 0), ("grads", 0), ("opt", 1), ("end", 1), ("grads", 1), ("opt", 2), ("end", 2),
                           ("train_end", 2)]
    assert json.loads((tmp_path / "r/checkpoint/train_state/state.json").read_text())["step"] == 2  # saved at stop


def test_group_by_length_keeps_every_item_once_and_pads_less():
    lengths = [(i * 37) % 120 + 8 for i in range(1000)]  # short and long texts mixed
    items = list(range(1000))
    ident = lambda xs: xs  # noqa: E731  (collate: the item ids themselves)
    plain = EpochBatches(items, 16, ident, seed=5)
    grouped = EpochBatches(items, 16, ident, seed=5, lengths=lengths)

    def padded_tokens(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    for epoch in (0, 1):
        a, b = list(plain(epoch)), list(grouped(epoch))
        assert sorted(i for x in b for i in x) == items  # each item exactly once
        assert len(b) == len(a) == 63
        assert sum(len(x) < 16 for x in b) == 1  # only the last item group leaves a short batch
        assert padded_tokens(b) < 0.6 * padded_tokens(a)  # measured: 0.58 and 0.57 of random batching's padding
    assert list(grouped(0)) == list(EpochBatches(items, 16, ident, seed=5, lengths=lengths)(0))  # seeded
    assert list(grouped(0)) != list(grouped(1))  # a new order every epoch
    assert list(plain(0)) == [items_ for items_ in (lambda o: [o[i:i + 16] for i in range(0, 1000, 16)])(
        torch.randperm(1000, generator=torch.Generator().manual_seed(5 * 1_000_003)).tolist())]  # unchanged
