"""PGD adversarial training on word embeddings: per-example norm balls, its relation to FGM, and that it trains."""

import json

import pytest
import torch

from bertrt.checkpoint import load_checkpoint
from bertrt.data import tasks as T
from bertrt.errors import BertrtError
from bertrt.tokenizer import load_tokenizer
from bertrt.train.objectives import make_loss_fn, pgd_perturbation, project_l2, task_loss

from .finetune_fixtures import one_thread, classify_rows, make_base, write_jsonl  # noqa: F401  (one_thread: autouse)
from .test_finetune_cli import cli


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("adv") / "base")


def batch_of(base, rows):
    feats = T.encode_classify([T.ClassifyExample(r["text"], None, r["label"]) for r in rows], load_tokenizer(base),
                              ["neg", "pos"], 32)
    return T.collate(feats)


def model_of(base):
    torch.manual_seed(0)
    return load_checkpoint(base, task="classify", labels=["neg", "pos"], init_missing_head=True).eval()


def test_project_l2_scales_only_examples_outside_the_ball():
    delta = torch.zeros(3, 2, 2)
    delta[0, 0, 0] = 3.0  # norm 3: scaled to 1
    delta[1, 1, 1] = 0.5  # norm 0.5: inside, kept
    p = project_l2(delta, 1.0)  # example 2 is all zeros: kept, no division by zero
    assert torch.equal(p[0, 0, 0], torch.tensor(1.0)) and torch.equal(p[1], delta[1]) and torch.equal(p[2], delta[2])


def test_pgd_stays_inside_each_examples_ball_and_reaches_its_surface(base):
    model, b = model_of(base), batch_of(base, classify_rows(12, 3))
    eps = 0.3
    for steps in (1, 2, 5):
        delta = pgd_perturbation(model, b, "classify", None, eps, steps, alpha=2.5 * eps / steps)
        assert delta.shape == (*b["input_ids"].shape, model.config.hidden_size)
        norms = delta.flatten(1).norm(dim=1)
        assert norms.shape == (12,)
        assert (norms <= eps * (1 + 1e-6)).all(), norms  # each example inside its own ball
        # the walk (2.5 epsilon long) is projected back onto the surface: the first step puts every example on it,
        # later steps may turn back inwards, but some end on it (the projection was active)
        on_surface = (norms - eps).abs() <= 1e-5 * eps
        assert on_surface.all() if steps == 1 else on_surface.sum() >= 3, (steps, norms)
        # padding carries no perturbation: the loss never looks through it
        assert delta[b["attention_mask"] == 0].abs().max() == 0
    # a step too short to reach the surface: the norm is alpha * steps at most, strictly inside
    small = pgd_perturbation(model, b, "classify", None, eps, 2, alpha=0.05).flatten(1).norm(dim=1)
    assert (small <= 0.1 + 1e-6).all() and (small > 0.05).all(), small


def test_pgd_with_one_step_is_fgm_on_each_example_alone(base):
    """One step of size >= epsilon, projected: each example moves epsilon along its own normalised gradient, which
    is FGM run on that example by itself (FGM normalises over its batch). The sum over examples matches."""
    model, rows = model_of(base), classify_rows(6, 5)
    pgd, n = make_loss_fn("classify", adversarial="pgd", epsilon=0.5, steps=1)(model, batch_of(base, rows))
    fgm_alone = sum(make_loss_fn("classify", adversarial="fgm", epsilon=0.5)(model, batch_of(base, [r]))[0].item()
                    for r in rows)
    assert n == 6
    assert abs(pgd.item() - fgm_alone) <= 1e-5 * abs(fgm_alone), (pgd.item(), fgm_alone)
    # FGM on the whole batch spreads one epsilon over all six examples: a different (weaker) attack
    fgm_batch = make_loss_fn("classify", adversarial="fgm", epsilon=0.5)(model, batch_of(base, rows))[0].item()
    assert fgm_batch < pgd.item() - 1e-3, (fgm_batch, pgd.item())


def test_pgd_attack_raises_the_loss_and_more_steps_raise_it_further(base):
    model, b = model_of(base), batch_of(base, classify_rows(16, 7))
    clean = task_loss("classify", model(b["input_ids"], b["attention_mask"], b["token_type_ids"]), b)[0].item()
    attacked = {k: make_loss_fn("classify", adversarial="pgd", epsilon=1.0, steps=k)(model, b)[0].item() - clean
                for k in (1, 5)}
    assert attacked[1] > clean + 1e-3 and attacked[5] > attacked[1] + 1e-4, (clean, attacked)


def test_pgd_arguments_are_checked():
    with pytest.raises(BertrtError, match="steps >= 1"):
        make_loss_fn("classify", adversarial="pgd", steps=0)
    with pytest.raises(BertrtError, match="fgm, pgd"):
        make_loss_fn("classify", adversarial="free")


def test_finetune_with_pgd_learns_the_task(base, tmp_path, monkeypatch, capsys):
    # epsilon is in the embeddings' units: the tiny model's word vectors have norm ~0.1 (std 0.02, 32 dimensions)
    train = write_jsonl(tmp_path / "train.jsonl", classify_rows(160, 1))
    ev = write_jsonl(tmp_path / "eval.jsonl", classify_rows(40, 2))
    code, _, err = cli(monkeypatch, capsys, "finetune", train, "--task", "classify", "--from", base, "--eval", ev,
                       "-o", tmp_path / "m", "--batch-size", 16, "--max-length", 32, "--lr", 4e-3, "--epochs", 8,
                       "--adversarial", "pgd", "--adv-steps", 2, "--adv-epsilon", 0.01)
    assert code in (0, None), err
    info = json.loads((tmp_path / "m" / "finetune.json").read_text())
    assert info["config"]["adversarial"] == "pgd" and info["config"]["adv_steps"] == 2
    assert info["best"]["accuracy"] >= 0.9, info["evals"]
    losses = [json.loads(line)["loss"] for line in (tmp_path / "m" / "run" / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"]
    assert losses[-1] < 0.5 * losses[0], losses  # clean + attacked loss, falling
