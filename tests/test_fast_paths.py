"""The training fast paths in bertrt.model: cheaper CPU dropout, attention with it, fused MLM decoder + loss.

Each must compute what the plain PyTorch path computes (exactly, or in distribution for the random parts).
"""

import pytest
import torch
import torch.nn.functional as F

from bertrt.model import Bert, BertConfig, DecoderCrossEntropy, attention, dropout
from bertrt.train.loop import keep_freed_memory

KEEP_SCALE = 65536 / (65536 - 6554)  # p = 0.1 rounds to 6554 / 65536


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_rate_scale_and_gradient(dtype):
    torch.manual_seed(0)
    x = (torch.rand(1 << 20) + 1.0).to(dtype).requires_grad_()  # no zeros, so a zero output means dropped
    y = dropout(x, 0.1, True)
    dropped = y == 0
    # binomial sd over 2^20 draws is 0.0003: +-0.0015 is five of them
    assert abs(dropped.float().mean().item() - 0.1) < 0.0015
    kept = ~dropped
    assert torch.equal(y[kept], (x[kept] * KEEP_SCALE).to(dtype))
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, torch.where(kept, torch.tensor(KEEP_SCALE, dtype=dtype), 0))


def test_dropout_is_seeded_and_identity_in_eval():
    x = torch.randn(64, 128)
    torch.manual_seed(3)
    a = dropout(x, 0.1, True)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(x, 0.1, True))
    assert dropout(x, 0.1, False) is x and dropout(x, 0.0, True) is x
    # no pattern across positions: the mask's 16-bit chunks come from 64-bit words, so check each chunk slot
    torch.manual_seed(0)
    slots = (dropout(torch.ones(1 << 20), 0.3, True) == 0).view(-1, 4).float().mean(0)
    assert torch.all((slots - 0.3).abs() < 0.005), slots


def test_attention_with_dropout_matches_sdpa_in_expectation_and_ignores_padding():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 16, 8) for _ in range(3))
    mask = torch.zeros(2, 1, 1, 16)
    mask[1, ..., 12:] = torch.finfo(torch.float32).min  # the second row's last 4 keys are padding
    v[1, :, 12:] = 1e6  # any weight on a padded key would show
    exact = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    draws = torch.stack([attention(q, k, v, mask, 0.1) for _ in range(2000)])
    assert draws.abs().max() < 100  # padding never attended, whatever was dropped
    # the mean over 2,000 draws is within 0.05 of the no-dropout output (values are O(1); sd of the mean ~0.01)
    assert (draws.mean(0) - exact).abs().max() < 0.05
    assert torch.equal(attention(q, k, v, mask, 0.0), exact)


def _plain(h, w, b, y):
    return F.cross_entropy(F.linear(h, w, b).float(), y, reduction="sum")


def test_decoder_cross_entropy_matches_plain_loss_and_gradients_fp32():
    torch.manual_seed(0)
    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(101, 16, requires_grad=True)
    b = torch.randn(101, requires_grad=True)
    y = torch.randint(0, 101, (37,))
    ref = _plain(h, w, b, y)
    ref_grads = torch.autograd.grad(ref * 0.5, (h, w, b))
    loss = DecoderCrossEntropy.apply(h, w, b, y)
    grads = torch.autograd.grad(loss * 0.5, (h, w, b), retain_graph=True)
    assert abs(loss.item() - ref.item()) < 1e-4 * ref.item()
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    again = torch.autograd.grad(loss * 0.5, (h, w, b))  # a retained graph gives the same gradients twice
    for g, r in zip(again, grads):
        assert torch.equal(g, r)


def test_pretrain_model_mlm_loss_equals_logits_path_fp32_and_bf16():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=300, hidden_size=32, num_heads=[2, 2], ffn_sizes=[64, 64], head_size=16,
                     task="pretrain", hidden_dropout=0.0, attention_dropout=0.0)
    model = Bert(cfg)
    ids = torch.randint(5, 300, (4, 24))
    positions = torch.rand(4, 24) < 0.3
    labels = torch.randint(5, 300, (int(positions.sum()),))
    for precision, rtol in (("fp32", 1e-5), ("bf16", 2e-2)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            fused = model(ids, mlm_positions=positions, mlm_labels=labels)["mlm_loss_sum"]
            plain = F.cross_entropy(model(ids, mlm_positions=positions)["mlm_logits"].float(), labels,
                                    reduction="sum")
        fused_grads = torch.autograd.grad(fused, list(model.parameters()), allow_unused=True)
        plain_grads = torch.autograd.grad(plain, list(model.parameters()), allow_unused=True)
        assert abs(fused.item() - plain.item()) <= rtol * plain.item()
        # per-parameter scale, floored: some gradients are zero in exact arithmetic (the key bias: softmax does
        # not see a constant added to every key) and are rounding noise on both paths
        floor = 1e-3 * max(r.abs().max().item() for r in plain_grads if r is not None)
        for (name, _), g, r in zip(model.named_parameters(), fused_grads, plain_grads):
            if r is None:  # the NSP head: not in the MLM loss
                assert g is None, name
                continue
            scale = max(r.abs().max().item(), floor)
            assert (g - r).abs().max().item() <= rtol * 5 * scale, (precision, name)


def test_keep_freed_memory_switch(monkeypatch):
    monkeypatch.setenv("BERTRT_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
    monkeypatch.delenv("BERTRT_KEEP_FREED_MEMORY")
    import platform

    if platform.libc_ver()[0] == "glibc":
        assert keep_freed_memory() is True
