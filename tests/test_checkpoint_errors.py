"""Bad checkpoints fail with one clear error naming the problem; the saved layout is what we promise."""

import json

import pytest
import torch

from bertrt.checkpoint import load_checkpoint, save_checkpoint
from bertrt.errors import CheckpointError, OutputExistsError
from bertrt.model import Bert, BertConfig


def tiny(task="classify", **kw):
    return BertConfig(vocab_size=60, hidden_size=16, num_heads=[2, 2], ffn_sizes=[24, 24], head_size=8,
                      max_position_embeddings=32, task=task, labels=["neg", "pos"] if task == "classify" else [],
                      **kw)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = Bert(tiny()).eval()
    save_checkpoint(model, tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


def test_round_trip_is_exact(saved):
    model, path = saved
    again = load_checkpoint(path)
    assert again.config == model.config
    ids = torch.randint(0, 60, (2, 9))
    with torch.no_grad():
        assert torch.equal(again(ids)["logits"], model(ids)["logits"])


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        load_checkpoint(tmp_path / "nope")


def test_other_architecture(saved):
    _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "roberta"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="roberta.*model_type 'bert'"):
        load_checkpoint(path)


def test_misshaped_and_missing_weights_reported_together(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    _, path = saved
    tensors = load_file(path / "model.safetensors")
    tensors["bert.encoder.layer.0.attention.self.query.weight"] = torch.zeros(16, 15)
    del tensors["bert.encoder.layer.1.output.dense.bias"]
    tensors["bert.encoder.layer.7.output.dense.bias"] = torch.zeros(16)
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "3 problems" in msg
    assert "missing: bert.layers.1.ffn.output.bias" in msg
    assert "unexpected: bert.layers.7.ffn.output.bias" in msg
    assert "bert.layers.0.attention.query.weight: checkpoint (16, 15) vs config (16, 16)" in msg


def test_corrupt_safetensors(saved):
    _, path = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])  # a truncated download
    with pytest.raises(CheckpointError, match="cannot read the weights"):
        load_checkpoint(path)


def test_missing_head_is_an_error_unless_asked_to_start_one(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(Bert(tiny("base")), tmp_path / "base")
    with pytest.raises(CheckpointError, match="missing: classifier.weight"):
        load_checkpoint(tmp_path / "base", task="classify", labels=["a", "b"])
    model = load_checkpoint(tmp_path / "base", task="classify", labels=["a", "b"], init_missing_head=True)
    assert model.fresh_weights == ["classifier.weight", "classifier.bias"]


def test_pytorch_bin_loads_only_plain_tensors(saved, tmp_path):
    model, path = saved
    from safetensors.torch import load_file

    tensors = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    torch.save(tensors, path / "pytorch_model.bin")
    with torch.no_grad():
        ids = torch.randint(0, 60, (1, 5))
        assert torch.equal(load_checkpoint(path)(ids)["logits"], model(ids)["logits"])

    class Evil:  # anything beyond tensors must be refused, not executed
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_checkpoint(path)


def test_no_silent_overwrite(saved):
    model, path = saved
    with pytest.raises(OutputExistsError, match="--force"):
        save_checkpoint(model, path)
    save_checkpoint(model, path, force=True)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt"]  # no temporary siblings left


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    import bertrt.checkpoint as ck

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ck, "hf_config", boom)
    with pytest.raises(RuntimeError):
        save_checkpoint(Bert(tiny()), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_flops_hand_count():
    cfg = BertConfig(vocab_size=10, hidden_size=8, num_heads=[2, 0], ffn_sizes=[5, 0], head_size=4)
    # layer 0: QKV 2*8*3*8=384, scores+context 2*2*T*8=32T, out 2*8*8=128, FFN 2*2*8*5=160; layer 1: nothing
    assert cfg.flops_per_token(seq_len=10) == 384 + 320 + 128 + 160
