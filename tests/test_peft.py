"""PEFT on bertrt's Bert: what trains, merge parity, save/reload identity, prefix masking, base checks."""

import pytest
import torch

from bertrt.checkpoint import load_checkpoint, save_checkpoint
from bertrt.errors import PeftError
from bertrt.model import Bert, BertConfig
from bertrt.train.peft import PeftConfig, apply_peft, is_peft_dir, load_peft, save_peft

H, LAYERS, VOCAB = 32, 2, 120


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=H, num_heads=[2] * LAYERS, ffn_sizes=[64] * LAYERS, head_size=16,
                     max_position_embeddings=64, task="base")
    path = tmp_path_factory.mktemp("peft") / "base"
    save_checkpoint(Bert(cfg), path)
    return path


def task_model(base, task="classify"):
    labels = {"classify": ["a", "b", "c"], "ner": ["O", "B-X", "I-X"], "qa": None}[task]
    torch.manual_seed(1)
    return load_checkpoint(base, task=task, labels=labels, init_missing_head=True)


def batch(seed=0, B=3, T=12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    return ids * mask, mask


def perturb(peft, seed=3):
    """Stand-in for training: give every trainable tensor (adapters included) non-trivial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in peft.model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def logits(model, task="classify"):
    ids, mask = batch()
    with torch.no_grad():
        out = model.eval()(ids, mask)
    return out["start_logits"] if task == "qa" else out["logits"]


def test_lora_trains_only_adapters_and_head(base):
    peft = apply_peft(task_model(base), PeftConfig("lora", r=4, targets=["query", "value"]))
    trainable, total = peft.parameter_counts()
    lora = LAYERS * 2 * 4 * (H + H)  # per layer: query and value, A (r x H) + B (H x r)
    head = (H * H + H) + (H * 3 + 3)  # pooler + classifier
    assert trainable == lora + head
    assert total == Bert(peft.model.config).num_parameters() + lora
    names = [n for n, p in peft.model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith(("classifier.", "bert.pooler.")) for n in names)


@pytest.mark.parametrize("method,extra", [
    ("adapter", LAYERS * 2 * ((H * 8 + 8) + (8 * H + H)) + LAYERS * 2 * 2 * H),  # bottlenecks + LayerNorms
    ("prefix", LAYERS * 2 * 2 * 5 * 16),  # keys and values: heads x length x head size, per layer
])
def test_native_methods_parameter_counts(base, method, extra):
    peft = apply_peft(task_model(base, "ner"), PeftConfig(method, adapter_size=8, prefix_length=5))
    assert peft.parameter_counts()[0] == extra + H * 3 + 3


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_zero_initialised_methods_start_as_the_base_model(base, method):
    before = logits(task_model(base))
    after = logits(apply_peft(task_model(base), PeftConfig(method)).model)
    assert torch.equal(before, after)


@pytest.mark.parametrize("method", ["lora", "adalora"])
@pytest.mark.parametrize("task", ["classify", "qa"])
def test_merge_matches_unmerged_logits(base, method, task):
    peft = apply_peft(task_model(base, task), PeftConfig(method, r=4, init_r=6, total_steps=100))
    perturb(peft)
    unmerged = logits(peft.model, task)
    merged = peft.merge()
    assert type(merged) is Bert and not any("lora" in k for k in merged.state_dict())
    assert set(merged.state_dict()) == set(Bert(merged.config).state_dict())
    err = (logits(merged, task) - unmerged).abs().max().item()
    assert err <= 1e-4, f"merged vs unmerged logits differ by {err}"
    assert err < (unmerged - logits(task_model(base, task), task)).abs().max().item()  # the adapter did something


@pytest.mark.parametrize("method", ["adapter", "prefix"])
def test_nonlinear_methods_refuse_to_merge(base, method):
    with pytest.raises(PeftError, match="cannot be merged"):
        apply_peft(task_model(base), PeftConfig(method)).merge()


@pytest.mark.parametrize("method", ["lora", "adalora", "adapter", "prefix"])
def test_saved_peft_reloads_with_identical_logits(base, tmp_path, method):
    task = "ner" if method == "prefix" else "classify"
    peft = apply_peft(task_model(base, task), PeftConfig(method, r=4, init_r=6, total_steps=100))
    perturb(peft)
    expected = logits(peft.model, task)
    peft.write_files(tmp_path, base)
    assert is_peft_dir(tmp_path) and not (tmp_path / "model.safetensors").exists()
    reloaded = load_peft(tmp_path)
    assert torch.equal(logits(reloaded.model, task), expected)
    assert reloaded.parameter_counts() == peft.parameter_counts()


def test_reload_refuses_a_different_base(base, tmp_path):
    peft = apply_peft(task_model(base), PeftConfig("lora"))
    save_peft(peft, tmp_path / "run", base)
    other = tmp_path / "other"
    torch.manual_seed(5)
    save_checkpoint(Bert(load_checkpoint(base).config), other)
    with pytest.raises(PeftError, match="not the checkpoint"):
        load_peft(tmp_path / "run", base=other)


def test_prefix_respects_padding(base):
    """The extended mask: a sentence alone gives the same logits as inside a right-padded batch."""
    peft = apply_peft(task_model(base, "ner"), PeftConfig("prefix", prefix_length=4))
    perturb(peft)
    ids, mask = batch()
    m = peft.model.eval()
    with torch.no_grad():
        padded = m(ids, mask)["logits"]
        alone = m(ids[2:, :4], mask[2:, :4])["logits"]
    assert (padded[2, :4] - alone[0]).abs().max().item() <= 1e-5
    assert (padded - logits(task_model(base, "ner"), "ner")).abs().max().item() > 1e-3  # the prefix matters


def test_adalora_prunes_ranks_after_steps(base):
    peft = apply_peft(task_model(base), PeftConfig("adalora", r=2, init_r=6, total_steps=40))
    opt = torch.optim.SGD([p for p in peft.model.parameters() if p.requires_grad], lr=0.1)
    ids, mask = batch()
    peft.model.train()
    for step in range(40):
        out = peft.model(ids, mask)["logits"]
        loss = torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2])) + peft.regularizer()
        loss.backward()
        opt.step()
        peft.after_step(step)
        opt.zero_grad()
    kept = sum(int((p != 0).sum()) for n, p in peft.model.named_parameters() if "lora_E" in n)
    # budget: r=2 per matrix on average over 2 layers x 2 targets = 8 of the 24 starting singular values (without
    # after_step all 24 are non-zero after these 40 steps)
    assert kept <= 8


def test_bad_configs():
    with pytest.raises(PeftError, match="unknown PEFT method"):
        PeftConfig("ia3")
    with pytest.raises(PeftError, match="not Bert linear layers"):
        PeftConfig("lora", targets=["q_proj"])
    with pytest.raises(PeftError, match="init_r must be >= r"):
        PeftConfig("adalora", r=8, init_r=4)
