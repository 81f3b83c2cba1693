"""MLM masking statistics over many draws: 15% chosen, 80/10/10, specials never, whole words whole."""

import numpy as np

from bertrt.data.pretraining import Masker

from .pretrain_fixtures import handmade_tokenizer

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
CONT = {6, 7, 11, 19}  # the "##" pieces of handmade_tokenizer()


def random_batch(rng, B=16, T=64):
    """[CLS] tokens [SEP] tokens [SEP] [PAD]..., with some [UNK]; words are a start piece + 0-2 continuations."""
    starts = np.array([5, 8, 9, 10, 12, 13, 14, 15, 16, 17, 18])
    conts = np.array(sorted(CONT))
    ids = np.full((B, T), PAD)
    for b in range(B):
        n = rng.integers(T // 2, T)
        row = [CLS]
        while len(row) < n - 2:
            row.append(int(rng.choice(starts)) if rng.random() > 0.03 else UNK)
            row += [int(x) for x in rng.choice(conts, rng.integers(0, 3))]
        row = row[:n - 2]
        row.insert(len(row) // 2, SEP)
        row.append(SEP)
        ids[b, :len(row)] = row
    return ids


def draws(masker, n=150, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        ids = random_batch(rng)
        yield ids, *masker(ids, rng)


def test_masking_statistics():
    masker = Masker(handmade_tokenizer(), mlm_prob=0.15)
    chosen_n = candidates = masked = randomised = kept = 0
    for ids, out, chosen, labels in draws(masker):
        special = np.isin(ids, [PAD, UNK, CLS, SEP, MASK])
        assert not (chosen & special).any()  # specials are never chosen
        assert (out[~chosen] == ids[~chosen]).all()  # nothing outside the chosen positions changes
        assert (labels == ids[chosen]).all()  # labels are the original tokens, row-major
        new = out[chosen]
        assert not np.isin(new[new != MASK], [PAD, UNK, CLS, SEP]).any()  # random replacements are real tokens
        per_row = chosen.sum(1)
        assert (per_row == np.maximum(1, np.rint(0.15 * (~special).sum(1)))).all()
        chosen_n += chosen.sum()
        candidates += (~special).sum()
        masked += (new == MASK).sum()
        randomised += ((new != MASK) & (new != labels)).sum()
        kept += (new == labels).sum()
    assert abs(chosen_n / candidates - 0.15) < 0.005
    assert abs(masked / chosen_n - 0.8) < 0.02
    # a random replacement hits the original token 1 time in 14 (14 non-special ids): counted as kept
    assert abs(randomised / chosen_n - 0.1 * 13 / 14) < 0.015
    assert abs(kept / chosen_n - (0.1 + 0.1 / 14)) < 0.015


def test_whole_word_masking_masks_words_whole():
    masker = Masker(handmade_tokenizer(), mlm_prob=0.15, whole_word=True)
    chosen_n = candidates = 0
    split_words = 0
    for ids, out, chosen, labels in draws(masker, n=100, seed=1):
        special = np.isin(ids, [PAD, UNK, CLS, SEP, MASK])
        assert not (chosen & special).any()
        prev_special = np.ones_like(special)
        prev_special[:, 1:] = special[:, :-1]
        cont = np.isin(ids, list(CONT)) & ~prev_special  # "##" pieces inside a word
        # a continuation piece is chosen exactly when the piece before it is (so whole words move together)
        prev_chosen = np.zeros_like(chosen)
        prev_chosen[:, 1:] = chosen[:, :-1]
        assert (chosen[cont] == prev_chosen[cont]).all()
        split_words += int(((chosen != prev_chosen) & cont).sum())
        chosen_n += chosen.sum()
        candidates += (~special).sum()
    assert split_words == 0
    assert 0.13 < chosen_n / candidates <= 0.15  # words are taken while they fit the 15% budget


def test_masks_are_fresh_each_draw_and_reproducible():
    masker = Masker(handmade_tokenizer())
    ids = random_batch(np.random.default_rng(5))
    a = masker(ids, np.random.default_rng([1, 0, 0]))  # (seed, epoch, batch)
    b = masker(ids, np.random.default_rng([1, 1, 0]))  # next epoch
    c = masker(ids, np.random.default_rng([1, 0, 0]))
    assert (a[1] != b[1]).any()
    assert all((x == y).all() for x, y in zip(a, c))
