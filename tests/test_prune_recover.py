"""Recovery: distillation fine-tuning on the training loop brings the pruned model's outputs back towards the
unpruned model's."""

import pytest
import torch

from bertrt.converters.prune import PruneConfig, prune
from bertrt.converters.prune.recover import RecoverConfig, _kd, distillation_loss_fn, recover
from bertrt.errors import PruneError

from .prune_helpers import batches, tiny_model


def features_of(data):  # back from padded batches to per-example features, as bertrt.data.tasks encodes them
    out = []
    for b in data:
        for i in range(b["input_ids"].shape[0]):
            n = int(b["attention_mask"][i].sum())
            out.append({"input_ids": b["input_ids"][i, :n].tolist(), "token_type_ids": [0] * n,
                        "labels": int(b["labels"][i])})
    return out


def mean_kd(student, teacher, data):
    with torch.no_grad():
        kd = [_kd(student(b["input_ids"], b["attention_mask"])["logits"],
                  teacher(b["input_ids"], b["attention_mask"])["logits"], 1.0) for b in data]
    return torch.cat(kd).mean().item()


def test_recovery_moves_the_pruned_model_towards_the_teacher():
    teacher = tiny_model(seed=6)
    data = batches(6, seed=6)
    pruned = prune(teacher, data, PruneConfig(0.3, seq_len=12, min_examples=8), progress=False)
    before = mean_kd(pruned, teacher, data)
    history = recover(pruned, teacher, features_of(data), RecoverConfig(epochs=4, lr=1e-3, batch_size=8, alpha=1.0),
                      progress=False)
    assert len(history) == 4 * 6  # 48 examples in batches of 8, four epochs
    assert not pruned.training and all(not p.requires_grad for p in teacher.parameters())
    assert mean_kd(pruned, teacher, data) < 0.5 * before


def test_distillation_of_the_teacher_itself_is_zero():
    model = tiny_model()
    b = batches(1)[0]
    loss, count = distillation_loss_fn("classify", model, RecoverConfig(epochs=1, alpha=1.0))(model, b)
    assert count == 8 and abs(loss.item()) < 1e-5


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(epochs=1, alpha=1.5), dict(epochs=1, lr=0)])
def test_bad_recovery_settings_are_refused(bad):
    with pytest.raises(PruneError):
        RecoverConfig(**bad)
