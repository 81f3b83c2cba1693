"""BERT in one readable file.

One config dataclass describes every model, pruned or not: each layer has its own number of attention heads and
its own FFN width, so a structurally pruned model is an ordinary model here. Module names differ from Hugging
Face's, but the mapping between the two is one table (``HF_RENAMES``) and weight import is checked key by key and
shape by shape in ``bertrt.checkpoint``.

Shapes in comments use B = batch, T = sequence length, H = hidden size, nh = heads in this layer, hs = head size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .tasks import LABELLED_TASKS, SEQUENCE_TASKS

# What each task puts on top of the encoder; "base" is the bare encoder (+ pooler when the checkpoint has one).
TASKS = ("base", "embed", "pretrain", "mlm", "classify", "multilabel", "relation", "ner", "qa")
ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}
PRESETS = {  # name: (layers, hidden, heads)
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "base": (12, 768, 12),
}


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout`` with a cheaper mask on CPU.

    torch's CPU dropout draws one Mersenne-Twister number per element (``bernoulli_``), which took ~14% of a bf16
    pretraining step. Here every 64-bit draw gives four 16-bit uniforms, so ``p`` is rounded to a multiple of 1/65536
    (0.1 -> 0.100006) and kept values are scaled by 1 / (1 - that p): the expectation is unchanged, forward + backward
    is ~2x faster at BERT's sizes, and the stream still comes from torch's seeded generator (resume stays exact).
    Off CPU, torch's fused kernel.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    drop, n = round(p * 65536), x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2 ** 63, 2 ** 63 - 1)
    keep = words.view(torch.int16)[:n].view(x.shape) >= drop - 32768  # P(drop) = drop / 65536
    return torch.where(keep, x * (65536 / (65536 - drop)), 0.0)


class Dropout(nn.Dropout):
    """``nn.Dropout`` through :func:`dropout` (still an ``nn.Dropout``, so code that sets ``.p`` keeps working)."""

    def forward(self, x):
        return dropout(x, self.p, self.training)


def attention(q, k, v, mask, p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs) + mask) v, dropout ``p`` on the probabilities; q, k, v: (B, nh, T, hs).

    SDPA, except when training on CPU: there SDPA's dropout falls back to its math path with ``bernoulli_``; the
    same math with :func:`dropout` is 1.3x (fp32) to 2x (bf16 autocast) faster forward + backward.
    """
    if p == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))  # (B, nh, T, T)
    if mask is not None:
        scores = scores + mask
    return dropout(scores.softmax(-1), p, True) @ v


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_heads: list[int] = field(default_factory=lambda: [12] * 12)  # per layer; len() is the layer count
    ffn_sizes: list[int] = field(default_factory=lambda: [3072] * 12)  # per layer
    head_size: int = 64  # fixed by the unpruned model: hidden_size // original head count
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    activation: str = "gelu"
    pad_token_id: int = 0
    task: str = "base"
    labels: list[str] = field(default_factory=list)  # classify / ner label names, index = class id
    with_pooler: bool = True  # HF's BertModel has a pooler; its token-classification / QA / MLM models do not
    pooling: str = "mean"  # "embed" task: "mean" or "cls"
    normalize: bool = False  # "embed" task: L2-normalise the pooled vector
    markers: list[int] = field(default_factory=list)  # "relation": ids of [E1] [/E1] [E2] [/E2] (head, tail)

    def __post_init__(self):
        if len(self.num_heads) != len(self.ffn_sizes):
            raise ValueError(f"num_heads has {len(self.num_heads)} layers but ffn_sizes has {len(self.ffn_sizes)}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {', '.join(TASKS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unsupported activation {self.activation!r}; supported: {', '.join(ACTIVATIONS)}")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', not {self.pooling!r}")
        if any(h < 0 for h in self.num_heads) or any(f < 0 for f in self.ffn_sizes):
            raise ValueError("head counts and FFN sizes must be >= 0")
        if self.task in LABELLED_TASKS and len(self.labels) < 2:
            raise ValueError(f"task {self.task!r} needs at least 2 label names, got {self.labels}")

    @property
    def num_layers(self) -> int:
        return len(self.num_heads)

    @classmethod
    def preset(cls, name: str, **overrides) -> "BertConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        layers, hidden, heads = PRESETS[name]
        return cls(hidden_size=hidden, num_heads=[heads] * layers, ffn_sizes=[4 * hidden] * layers,
                   head_size=hidden // heads, **overrides)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def flops_per_token(self, seq_len: int = 128) -> int:
        """Multiply-accumulate FLOPs (2 per MAC) of the encoder for one token at sequence length ``seq_len``."""
        H, hs = self.hidden_size, self.head_size
        total = 0
        for nh, ffn in zip(self.num_heads, self.ffn_sizes):
            a = nh * hs
            total += 2 * H * 3 * a  # Q, K, V projections
            total += 2 * 2 * seq_len * a  # Q @ K^T and P @ V
            total += 2 * a * H  # attention output projection
            total += 2 * 2 * H * ffn  # FFN in and out
        return total


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.hidden_dropout)

    def forward(self, input_ids, token_type_ids):
        T = input_ids.shape[1]
        positions = torch.arange(T, device=input_ids.device).unsqueeze(0)  # (1, T)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(positions)  # (B, T, H)
        return self.dropout(self.norm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention followed by the output projection, residual and LayerNorm (post-LN, as BERT)."""

    def __init__(self, cfg: BertConfig, num_heads: int):
        super().__init__()
        self.num_heads, self.head_size = num_heads, cfg.head_size
        inner = num_heads * cfg.head_size
        self.query = nn.Linear(cfg.hidden_size, inner)
        self.key = nn.Linear(cfg.hidden_size, inner)
        self.value = nn.Linear(cfg.hidden_size, inner)
        self.output = nn.Linear(inner, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.hidden_dropout)
        self.attention_dropout = cfg.attention_dropout

    def forward(self, x, mask):  # x: (B, T, H); mask: (B, 1, 1, T) additive, 0 where attended
        B, T, _ = x.shape
        if self.num_heads == 0:  # every head pruned: the block contributes only its output bias
            return self.norm(x + self.dropout(self.output.bias.expand_as(x)))
        nh, hs = self.num_heads, self.head_size
        q = self.query(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.key(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = self.value(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        p = self.attention_dropout if self.training else 0.0
        y = attention(q, k, v, mask, p)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, nh * hs)  # (B, T, nh*hs)
        return self.norm(x + self.dropout(self.output(y)))


class FeedForward(nn.Module):
    def __init__(self, cfg: BertConfig, ffn_size: int):
        super().__init__()
        self.intermediate = nn.Linear(cfg.hidden_size, ffn_size)
        self.output = nn.Linear(ffn_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.hidden_dropout)
        self.act = ACTIVATIONS[cfg.activation]

    def forward(self, x):  # (B, T, H)
        h = self.act(self.intermediate(x))  # (B, T, ffn)
        return self.norm(x + self.dropout(self.output(h)))


class Layer(nn.Module):
    def __init__(self, cfg: BertConfig, num_heads: int, ffn_size: int):
        super().__init__()
        self.attention = SelfAttention(cfg, num_heads)
        self.ffn = FeedForward(cfg, ffn_size)

    def forward(self, x, mask):
        return self.ffn(self.attention(x, mask))


class Encoder(nn.Module):
    """Embeddings, the stack of layers, and (optionally) the pooler: HF's ``BertModel``."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Layer(cfg, nh, f) for nh, f in zip(cfg.num_heads, cfg.ffn_sizes))
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size) if cfg.with_pooler else None

    def forward(self, input_ids, attention_mask, token_type_ids):
        # additive mask: 0 for tokens to attend, a large negative for padding
        mask = (1.0 - attention_mask[:, None, None, :].to(self.embeddings.norm.weight.dtype))  # (B, 1, 1, T)
        mask = mask * torch.finfo(mask.dtype).min
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def pool(self, hidden):  # (B, T, H) -> (B, H): HF's pooler, tanh(W h_CLS + b)
        return torch.tanh(self.pooler(hidden[:, 0]))


class MaskedLMHead(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.transform = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.act = ACTIVATIONS[cfg.activation]

    def forward(self, h, decoder_weight):  # (N, H) -> (N, vocab); the decoder is tied to the word embeddings
        h = self.norm(self.act(self.transform(h)))
        return F.linear(h, decoder_weight, self.bias)

    def loss_sum(self, h, decoder_weight, labels):  # (N, H), (V, H), (N,) -> summed cross-entropy, a scalar
        h = self.norm(self.act(self.transform(h)))
        dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
        with torch.autocast(h.device.type, enabled=False):
            return DecoderCrossEntropy.apply(h.to(dtype), decoder_weight.to(dtype), self.bias, labels)


class DecoderCrossEntropy(torch.autograd.Function):
    """sum_i cross_entropy(h_i W^T + b, y_i), without keeping the (N, V) logits around for backward.

    The forward turns the logits into their own gradient (softmax - one-hot) in place and saves that, so the
    vocabulary-wide work is one GEMM, one log-softmax, one exp; the plain path (logits, then ``F.cross_entropy``)
    also writes a log-softmax copy, a zero-filled gradient buffer and a backward pass over both: ~8% of a ``mini``
    pretraining step. The logits are fp32 whatever ``h``'s dtype (bf16 GEMM, fp32 softmax, as autocast does).
    """

    @staticmethod
    def forward(ctx, h, weight, bias, labels):  # h (N, H) and weight (V, H) in the compute dtype; bias (V,) fp32
        logits = (h @ weight.t()).float().add_(bias)  # (N, V)
        logp = torch.log_softmax(logits, -1)  # (N, V)
        del logits
        rows = torch.arange(labels.numel(), device=labels.device)
        loss = -logp[rows, labels].sum()
        grad = logp.exp_()  # softmax
        grad[rows, labels] -= 1.0  # d(sum CE)/d logits = softmax - one-hot
        ctx.save_for_backward(h, weight, grad)
        return loss

    @staticmethod
    def backward(ctx, g):
        h, weight, grad = ctx.saved_tensors
        grad = grad * g  # (N, V) fp32; not in place, so a retained graph can run backward again
        grad_c = grad.to(h.dtype)
        return grad_c @ weight, grad_c.t() @ h, grad.sum(0), None


class Bert(nn.Module):
    """The encoder plus the head of ``cfg.task``; ``forward`` returns a dict of the task's outputs.

    Outputs by task: base -> hidden (B,T,H) and pooled (B,H) if there is a pooler; embed -> embedding (B,H);
    pretrain -> mlm_logits, nsp_logits (B,2); mlm -> mlm_logits; classify, multilabel, relation -> logits (B,L);
    ner -> logits (B,T,L);
    qa -> start_logits, end_logits (B,T). ``mlm_logits`` is (B,T,V), or (N,V) for only the N positions where
    ``mlm_positions`` (B,T bool) is true -- pretraining asks for the masked positions alone. With ``mlm_labels``
    (one per selected position) the MLM output is ``mlm_loss_sum``, the summed cross-entropy, instead of the logits.
    """

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.bert = Encoder(cfg)
        H, task = cfg.hidden_size, cfg.task
        self.dropout = Dropout(cfg.hidden_dropout)
        if task in ("pretrain", "mlm"):
            self.mlm = MaskedLMHead(cfg)
        if task == "pretrain":
            self.nsp = nn.Linear(H, 2)
        if task == "relation":  # from the head's and the tail's marked spans, side by side (``marked``)
            self.classifier = nn.Linear(2 * H, len(cfg.labels))
        elif task in LABELLED_TASKS:
            self.classifier = nn.Linear(H, len(cfg.labels))
        if task == "qa":
            self.qa_outputs = nn.Linear(H, 2)
        if task in ("pretrain",) + SEQUENCE_TASKS and not cfg.with_pooler:
            raise ValueError(f"task {task!r} needs the pooler (with_pooler=True)")
        self.apply(self._init_weights)

    def _init_weights(self, m, std=0.02):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                m.weight.data[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, mlm_positions=None,
                mlm_labels=None) -> dict:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        h = self.bert(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        task = self.config.task
        if task == "base":
            return {"hidden": h, **({"pooled": self.bert.pool(h)} if self.bert.pooler is not None else {})}
        if task == "embed":
            return {"embedding": self.embed(h, attention_mask)}
        if task in ("pretrain", "mlm"):
            words = self.bert.embeddings.word_embeddings.weight
            h_mlm = h[mlm_positions] if mlm_positions is not None else h
            if mlm_labels is not None:  # training: the summed loss, never the (N, V) logits
                out = {"mlm_loss_sum": self.mlm.loss_sum(h_mlm.reshape(-1, h.shape[-1]), words, mlm_labels.reshape(-1))}
            else:
                out = {"mlm_logits": self.mlm(h_mlm, words)}
            if task == "pretrain":
                out["nsp_logits"] = self.nsp(self.bert.pool(h))  # (B, 2)
            return out
        if task in SEQUENCE_TASKS:  # multilabel: one independent sigmoid per label, applied by decoding
            return {"logits": self.classifier(self.dropout(self.bert.pool(h)))}  # (B, L)
        if task == "ner":
            return {"logits": self.classifier(self.dropout(h))}  # (B, T, L)
        if task == "relation":
            return {"logits": self.classifier(self.dropout(self.marked(h, input_ids)))}  # (B, L)
        start, end = self.qa_outputs(h).unbind(-1)  # qa: (B, T) each
        return {"start_logits": start, "end_logits": end}

    def marked(self, h, input_ids):  # (B, T, H) -> (B, 2H)
        """The head's and the tail's representations side by side: each the mean of the hidden states from its
        opening marker to its closing one, both included (the encoder puts each marker in a row exactly once).
        Why not the opening marker alone (Baldini Soares et al.): a model must first learn to attend from it to
        its span; a small model fine-tuned from scratch did not within 400 steps of a synthetic task, where the
        span's mean learned it in 50."""
        pos = torch.arange(h.shape[1], device=h.device)[None, :]  # (1, T)
        out = []
        for opening, closing in zip(self.config.markers[0::2], self.config.markers[1::2]):
            a = (input_ids == opening).float().argmax(1, keepdim=True)  # (B, 1)
            b = (input_ids == closing).float().argmax(1, keepdim=True)
            m = ((pos >= a) & (pos <= b)).to(h.dtype).unsqueeze(-1)  # (B, T, 1)
            out.append((h * m).sum(1) / m.sum(1).clamp(min=1.0))  # (B, H)
        return torch.cat(out, -1)

    def embed(self, h, attention_mask):  # (B, T, H) -> (B, H)
        if self.config.pooling == "cls":
            v = h[:, 0]
        else:
            m = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(v, dim=-1) if self.config.normalize else v

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class Cloze(nn.Module):
    """A masked-LM model read as a classifier through a cloze prompt (PET's scoring): each label's logit is the
    logsumexp of the MLM logits of its verbalizer words at the input's one [MASK]. Only the verbalizer's rows of
    the tied decoder are computed, so the classifier (and its export) has one logit per label; the softmax over
    them ranks labels as the vocabulary-wide one does. ``config`` is the MLM model's as a classify model, so export,
    gates and evaluation treat it as one; ``mlm`` is the model that is trained and saved."""

    def __init__(self, mlm: Bert, words: list[list[int]], mask_id: int, labels: list[str]):
        super().__init__()
        if mlm.config.task not in ("mlm", "pretrain") or len(words) != len(labels):
            raise ValueError("a cloze classifier needs a masked-LM model and one word list per label")
        self.mlm, self.mask_id = mlm, mask_id
        self.config = BertConfig(**{**asdict(mlm.config), "task": "classify", "labels": list(labels)})
        flat = [i for ws in words for i in ws]
        groups = torch.full((len(words), len(flat)), float("-inf"))  # (L, K): 0 where word k is label l's
        k = 0
        for label, ws in enumerate(words):
            groups[label, k:k + len(ws)] = 0.0
            k += len(ws)
        self.register_buffer("word_ids", torch.tensor(flat), persistent=False)
        self.register_buffer("groups", groups, persistent=False)

    @property
    def bert(self) -> Encoder:  # the MLM model's encoder (not a second registration: one name per weight)
        return self.mlm.bert

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> dict:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        h = self.bert(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        at = (input_ids == self.mask_id).to(h.dtype).unsqueeze(-1)  # (B, T, 1): the prompt's one [MASK]
        head = self.mlm.mlm
        h = head.norm(head.act(head.transform((h * at).sum(1))))  # (B, H)
        words = F.linear(h, self.bert.embeddings.word_embeddings.weight[self.word_ids], head.bias[self.word_ids])
        return {"logits": (words.unsqueeze(1) + self.groups).logsumexp(-1)}  # (B, K) -> (B, L)


# Our state-dict names and Hugging Face's, as prefixes; {i} is a layer index, {p} one of query/key/value.
# bertrt.checkpoint renames both ways with this one table; a test round-trips every key of every HF BERT class.
HF_NAMES = [
    ("bert.layers.{i}.attention.{p}.", "bert.encoder.layer.{i}.attention.self.{p}."),
    ("bert.layers.{i}.attention.output.", "bert.encoder.layer.{i}.attention.output.dense."),
    ("bert.layers.{i}.attention.norm.", "bert.encoder.layer.{i}.attention.output.LayerNorm."),
    ("bert.layers.{i}.ffn.intermediate.", "bert.encoder.layer.{i}.intermediate.dense."),
    ("bert.layers.{i}.ffn.output.", "bert.encoder.layer.{i}.output.dense."),
    ("bert.layers.{i}.ffn.norm.", "bert.encoder.layer.{i}.output.LayerNorm."),
    ("bert.embeddings.norm.", "bert.embeddings.LayerNorm."),
    ("bert.pooler.", "bert.pooler.dense."),
    ("mlm.transform.", "cls.predictions.transform.dense."),
    ("mlm.norm.", "cls.predictions.transform.LayerNorm."),
    ("mlm.bias", "cls.predictions.bias"),
    ("nsp.", "cls.seq_relationship."),
]
