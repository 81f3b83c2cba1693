"""bertrt's model equals transformers' BERT classes, both ways, through the real checkpoint code."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from bertrt.checkpoint import from_hf_key, load_checkpoint, save_checkpoint, to_hf_key  # noqa: E402

ATOL = 1e-5
HF_CLASSES = {
    "base": "BertModel",
    "pretrain": "BertForPreTraining",
    "mlm": "BertForMaskedLM",
    "classify": "BertForSequenceClassification",
    "ner": "BertForTokenClassification",
    "qa": "BertForQuestionAnswering",
}


def random_hf_config(seed):
    g = torch.Generator().manual_seed(seed)
    heads = [2, 4][seed % 2]
    return transformers.BertConfig(
        vocab_size=int(torch.randint(50, 200, (1,), generator=g)), hidden_size=heads * 8,
        num_hidden_layers=int(torch.randint(1, 4, (1,), generator=g)), num_attention_heads=heads,
        intermediate_size=int(torch.randint(20, 80, (1,), generator=g)), max_position_embeddings=40,
        type_vocab_size=2, num_labels=3, hidden_act=["gelu", "gelu_new", "relu"][seed % 3],
    )


def random_batch(cfg, seed, batch=4, length=17):
    g = torch.Generator().manual_seed(1000 + seed)
    ids = torch.randint(1, cfg.vocab_size, (batch, length), generator=g)
    lengths = torch.randint(2, length + 1, (batch,), generator=g)
    lengths[0] = length  # at least one full row, as in a real padded batch
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()  # right padding
    ids = ids * mask
    types = (torch.rand(batch, length, generator=g) > 0.5).long() * mask
    return ids, mask, types


def max_err(a, b, mask):
    """Max abs difference over unpadded positions (padded positions are meaningless in both models)."""
    if a.dim() >= 2 and a.shape[:2] == mask.shape:
        keep = mask.bool()
        return (a[keep] - b[keep]).abs().max().item()
    return (a - b).abs().max().item()


def hf_outputs(task, out):
    return {
        "base": lambda: {"hidden": out.last_hidden_state, "pooled": out.pooler_output},
        "pretrain": lambda: {"mlm_logits": out.prediction_logits, "nsp_logits": out.seq_relationship_logits},
        "mlm": lambda: {"mlm_logits": out.logits},
        "classify": lambda: {"logits": out.logits},
        "ner": lambda: {"logits": out.logits},
        "qa": lambda: {"start_logits": out.start_logits, "end_logits": out.end_logits},
    }[task]()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("task", list(HF_CLASSES))
def test_hf_to_bertrt_parity(tmp_path, task, seed):
    torch.manual_seed(seed)
    hf_cfg = random_hf_config(seed)
    if task == "qa":
        hf_cfg.num_labels = 2  # a QA head has exactly two outputs: start and end
    hf = getattr(transformers, HF_CLASSES[task])(hf_cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = load_checkpoint(tmp_path / "hf")
    assert ours.config.task == task
    ids, mask, types = random_batch(hf_cfg, seed)
    with torch.no_grad():
        expected = hf_outputs(task, hf(input_ids=ids, attention_mask=mask, token_type_ids=types))
        got = ours(ids, mask, types)
    assert set(got) == set(expected)
    for name in expected:
        assert got[name].shape == expected[name].shape, name
        assert max_err(got[name], expected[name], mask) <= ATOL, name


@pytest.mark.parametrize("task", list(HF_CLASSES))
def test_bertrt_to_hf_parity(tmp_path, task):
    torch.manual_seed(7)
    hf_cfg = random_hf_config(7)
    if task == "qa":
        hf_cfg.num_labels = 2
    getattr(transformers, HF_CLASSES[task])(hf_cfg).save_pretrained(tmp_path / "hf")
    ours = load_checkpoint(tmp_path / "hf")
    with torch.no_grad():  # perturb every weight so the test cannot pass on HF's own initial values
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    save_checkpoint(ours, tmp_path / "ours")
    hf = getattr(transformers, HF_CLASSES[task]).from_pretrained(tmp_path / "ours").eval()
    ids, mask, types = random_batch(hf_cfg, 7)
    with torch.no_grad():
        expected = hf_outputs(task, hf(input_ids=ids, attention_mask=mask, token_type_ids=types))
        got = ours(ids, mask, types)
    for name in expected:
        assert max_err(got[name], expected[name], mask) <= ATOL, name


def test_every_hf_key_round_trips():
    cfg = random_hf_config(0)
    for cls_name in HF_CLASSES.values():
        for key in getattr(transformers, cls_name)(cfg).state_dict():
            if key.endswith("position_ids") or key.startswith("cls.predictions.decoder"):
                continue  # buffers and the tied decoder are not stored
            ours = from_hf_key(key)
            hf_key = key if key.startswith(("bert.", "cls.", "classifier", "qa_outputs")) else "bert." + key
            assert to_hf_key(ours) == hf_key, (cls_name, key, ours)


def test_labels_survive_round_trip(tmp_path):
    cfg = random_hf_config(1)
    cfg.id2label = {0: "sport", 1: "tech", 2: "politics"}
    cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    transformers.BertForSequenceClassification(cfg).save_pretrained(tmp_path / "hf")
    ours = load_checkpoint(tmp_path / "hf")
    assert ours.config.labels == ["sport", "tech", "politics"]
    save_checkpoint(ours, tmp_path / "ours")
    back = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "ours")
    assert back.config.id2label == {0: "sport", 1: "tech", 2: "politics"}


def test_task_switch_keeps_encoder_and_starts_fresh_head(tmp_path):
    torch.manual_seed(3)
    cfg = random_hf_config(3)
    hf = transformers.BertForPreTraining(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    clf = load_checkpoint(tmp_path / "hf", task="classify", labels=["a", "b"], init_missing_head=True)
    assert clf.fresh_weights == ["classifier.weight", "classifier.bias"]
    base = load_checkpoint(tmp_path / "hf", task="base")
    ids, mask, types = random_batch(cfg, 3)
    with torch.no_grad():
        ref = hf.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        got = base(ids, mask, types)["hidden"]
    assert max_err(got, ref, mask) <= ATOL
