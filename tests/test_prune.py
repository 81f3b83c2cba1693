"""Structured pruning: removing heads/neurons is exactly masking them, FLOPs are counted right, the mask search is
optimal, Fisher importance is the per-example squared gradient, rescaling helps, and empty layers survive a save."""

import itertools
import json

import pytest
import torch

from bertrt.checkpoint import load_checkpoint
from bertrt.converters.prune import (PruneConfig, prune, remove_units, save_pruned, search_masks, unit_flops)
from bertrt.converters.prune.importance import fisher_importance, task_loss, unit_masks
from bertrt.errors import PruneError
from bertrt.model import BertConfig

from .prune_helpers import batches, tiny_model


def masks_for(model, keep_heads, keep_neurons):
    hm = [torch.zeros(nh) for nh in model.config.num_heads]
    nm = [torch.zeros(f) for f in model.config.ffn_sizes]
    for m, keep in zip(hm + nm, keep_heads + keep_neurons):
        m[keep] = 1.0
    return hm, nm


def outputs(model, batch, hm=None, nm=None):
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        if hm is None:
            hidden = model.bert(*inputs.values())
            return hidden, model(**inputs)["logits"]
        with unit_masks(model, hm, nm):
            hidden = model.bert(*inputs.values())
            return hidden, model(**inputs)["logits"]


KEEPS = [  # (heads per layer, neurons per layer); includes a layer with no heads and one with no neurons
    ([[0, 2], [1, 2, 3]], [[0, 5, 7, 30, 47], list(range(0, 48, 3))]),
    ([[], [3]], [list(range(20)), []]),
    ([[0, 1, 2, 3], []], [[], [1]]),
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("keep", KEEPS)
def test_pruning_is_exactly_masking(seed, keep):
    model = tiny_model(seed=seed)
    keep_heads, keep_neurons = keep
    pruned = remove_units(model, keep_heads, keep_neurons)
    assert pruned.config.num_heads == [len(h) for h in keep_heads]
    assert pruned.config.ffn_sizes == [len(n) for n in keep_neurons]
    for batch in batches(2, seed=seed):
        valid = batch["attention_mask"].bool()
        h_masked, l_masked = outputs(model, batch, *masks_for(model, keep_heads, keep_neurons))
        h_pruned, l_pruned = outputs(pruned, batch)
        assert (h_pruned - h_masked)[valid].abs().max() <= 1e-5  # padded positions are compared out
        assert (l_pruned - l_masked).abs().max() <= 1e-5
        h_full, _ = outputs(model, batch)
        assert (h_full - h_masked)[valid].abs().max() > 1e-2  # the masks really change the model


def test_flops_hand_count():
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_heads=[2, 0], ffn_sizes=[64, 0], head_size=16)
    # layer 0: Q/K/V 2*32*96 = 6144, QK^T + PV at length 10: 2*2*10*32 = 1280, output 2*32*32 = 2048,
    # FFN 2*2*32*64 = 8192; layer 1 has nothing left
    assert cfg.flops_per_token(10) == 6144 + 1280 + 2048 + 8192 == 17664
    head, neuron = unit_flops(cfg, 10)
    assert (head, neuron) == (4736, 128)  # 3072 + 640 + 1024 per head; 64 + 64 per neuron
    assert 2 * head + 64 * neuron == 17664


@pytest.mark.parametrize("keep_flops", [1.0, 0.8, 0.5, 0.3, 0.05])
def test_pruned_flops_fit_the_budget_and_fill_it(keep_flops):
    model = tiny_model()
    pruned = prune(model, batches(), PruneConfig(keep_flops, seq_len=12, rescale=False, min_examples=8),
                   progress=False)
    cfg, new = model.config, pruned.config
    f_head, f_neuron = unit_flops(cfg, 12)
    budget = keep_flops * cfg.flops_per_token(12)
    used = new.flops_per_token(12)
    assert used == sum(new.num_heads) * f_head + sum(new.ffn_sizes) * f_neuron  # hand count of kept units
    assert used <= budget + 1e-6
    assert budget - used < f_neuron or sum(new.ffn_sizes) == sum(cfg.ffn_sizes)  # no room left for a neuron
    assert pruned.pruning["kept_flops"] == pytest.approx(used / cfg.flops_per_token(12))
    if keep_flops == 1.0:
        assert new.num_heads == cfg.num_heads and new.ffn_sizes == cfg.ffn_sizes


def test_pruned_model_equals_masked_model():
    model = tiny_model(seed=3)
    data = batches(seed=3)
    pruned = prune(model, data, PruneConfig(0.5, seq_len=12, rescale=False, min_examples=8), progress=False)
    p = pruned.pruning
    hm, nm = masks_for(model, p["kept_heads"], p["kept_neurons"])
    for batch in data:
        _, l_masked = outputs(model, batch, hm, nm)
        _, l_pruned = outputs(pruned, batch)
        assert (l_pruned - l_masked).abs().max() <= 1e-5


def test_mask_search_is_optimal_by_brute_force():
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_heads=[2, 2], ffn_sizes=[3, 3], head_size=8)
    g = torch.Generator().manual_seed(0)
    heads = [torch.rand(2, generator=g) for _ in range(2)]
    neurons = [torch.rand(3, generator=g) * 0.5 for _ in range(2)]
    f_head, f_neuron = unit_flops(cfg, 4)
    total = cfg.flops_per_token(4)
    units = [(s, f_head) for h in heads for s in h.tolist()] + [(s, f_neuron) for n in neurons for s in n.tolist()]
    for keep_flops in (0.9, 0.7, 0.5, 0.35, 0.2, 0.1):
        best = max(sum(s for (s, _), k in zip(units, chosen) if k)
                   for chosen in itertools.product([0, 1], repeat=len(units))
                   if sum(f for (_, f), k in zip(units, chosen) if k) <= keep_flops * total)
        kh, kn = search_masks(cfg, heads, neurons, keep_flops, 4)
        got = sum(heads[i][j].item() for i in range(2) for j in kh[i]) + \
            sum(neurons[i][j].item() for i in range(2) for j in kn[i])
        cost = sum(map(len, kh)) * f_head + sum(map(len, kn)) * f_neuron
        assert cost <= keep_flops * total
        assert got == pytest.approx(best, abs=1e-9), keep_flops


@pytest.mark.parametrize("task", ["classify", "ner", "qa"])
def test_fisher_is_the_sum_of_per_example_squared_gradients(task):
    model = tiny_model(task=task, heads=(2, 2), ffn=(8, 8))
    data = batches(1, batch_size=4, task=task)
    heads, neurons = fisher_importance(model, data, progress=False)
    want_h = [torch.zeros(2, dtype=torch.float64) for _ in range(2)]
    want_n = [torch.zeros(8, dtype=torch.float64) for _ in range(2)]
    b = data[0]
    for i in range(4):  # one example at a time, the plain way
        one = {k: v[i:i + 1] for k, v in b.items()}
        hm = [torch.ones(2, requires_grad=True) for _ in range(2)]
        nm = [torch.ones(8, requires_grad=True) for _ in range(2)]
        with unit_masks(model, hm, nm):
            loss = task_loss(task, model(one["input_ids"], one["attention_mask"], one["token_type_ids"]), one)
        for acc, g in zip(want_h + want_n, torch.autograd.grad(loss, hm + nm)):
            acc += g.double() ** 2
    for got, want in zip(heads + neurons, want_h + want_n):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-10)
    assert all(p.requires_grad for p in model.parameters())  # restored after the importance pass


def test_rescaling_lowers_every_layers_error_and_the_output_error():
    model = tiny_model(seed=5)
    data = batches(6, seed=5)
    plain = prune(model, data, PruneConfig(0.5, seq_len=12, rescale=False, min_examples=8), progress=False)
    tuned = prune(model, data, PruneConfig(0.5, seq_len=12, min_examples=8), progress=False)
    assert tuned.config.num_heads == plain.config.num_heads and tuned.config.ffn_sizes == plain.config.ffn_sizes
    rows = [r for r in tuned.pruning["rescale"] if "error_before" in r]
    assert rows and any(r["applied"] for r in rows)
    assert all(r["error_after"] <= r["error_before"] for r in rows)

    def output_error(m):
        err = 0.0
        for b in data:
            ref, _ = outputs(model, b)
            got, _ = outputs(m, b)
            err += ((got - ref)[b["attention_mask"].bool()] ** 2).sum().item()
        return err

    assert output_error(tuned) < 0.9 * output_error(plain)


def test_layers_without_heads_or_neurons_run_save_and_reload(tmp_path):
    model = tiny_model(seed=2)
    pruned = remove_units(model, [[], [0, 3]], [list(range(10)), []])
    pruned.pruning = {"note": "hand-picked"}
    save_pruned(pruned, tmp_path / "ckpt")
    again = load_checkpoint(tmp_path / "ckpt")
    assert again.config.num_heads == [0, 2] and again.config.ffn_sizes == [10, 0]
    assert json.loads((tmp_path / "ckpt" / "pruning.json").read_text()) == {"note": "hand-picked"}
    for b in batches(2, seed=2):
        want, got = outputs(pruned, b), outputs(again, b)
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
        assert torch.isfinite(got[1]).all()


@pytest.mark.parametrize("bad", [0, 0.0, -0.2, 1.01, 2, float("nan"), float("inf"), "0.5", True])
def test_keep_flops_outside_unit_interval_is_refused(bad):
    with pytest.raises(PruneError, match=r"keep_flops must be a fraction in \(0, 1\]"):
        PruneConfig(bad)


def test_config_round_trips_through_json():
    cfg = PruneConfig(0.6, seq_len=256, rescale=False)
    assert PruneConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_too_few_examples_and_wrong_task_batches_are_refused():
    model = tiny_model()
    with pytest.raises(PruneError, match="8 labelled examples are too few.*at least 64"):
        prune(model, batches(1), PruneConfig(0.5), progress=False)
    with pytest.raises(PruneError, match="no start_positions, end_positions but the checkpoint's task is 'qa'"):
        prune(tiny_model(task="qa"), batches(2), PruneConfig(0.5, min_examples=1), progress=False)
    with pytest.raises(PruneError, match="a 'embed' checkpoint has none"):
        prune(tiny_model(task="embed"), batches(2), PruneConfig(0.5, min_examples=1), progress=False)


def test_rescale_subset_spans_the_length_sorted_batches():
    from bertrt.converters.prune.rescale import spread_subset

    data = batches(10)  # 8 examples each
    picked = spread_subset(data, 24)
    assert len(picked) == 3 and picked[0] is data[0] and picked[-1] is data[-1]
    assert spread_subset(data, 80) is data
