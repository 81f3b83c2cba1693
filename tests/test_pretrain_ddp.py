"""Two-process torchrun on CPU (gloo): both ranks end with identical weights, equal to one process with the same
global batch; only rank 0 writes."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from .pretrain_fixtures import write_corpus

DRIVER = textwrap.dedent("""
    import hashlib, json, sys, torch
    from bertrt.train.loop import TrainConfig
    from bertrt.train.pretrain import PretrainConfig, pretrain
    from bertrt.train import distributed as D
    corpus, out, cache, accum = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(1)
    tiny = {"hidden_size": 32, "num_heads": [2, 2], "ffn_sizes": [64, 64], "head_size": 16,
            "max_position_embeddings": 64, "hidden_dropout": 0.0, "attention_dropout": 0.0}
    cfg = PretrainConfig(vocab_size=120, seq_len=32, batch_size=4, eval_fraction=0.0, cache_dir=cache,
                         model_overrides=tiny, device="cpu")
    model, result = pretrain([corpus], out, cfg, TrainConfig(lr=1e-3, max_steps=4, grad_accum=accum, seed=2,
                                                             progress=False))
    weights = torch.cat([p.detach().flatten() for p in model.state_dict().values()])
    with open(f"{out}.rank{D.rank()}.json", "w") as f:
        json.dump({"world": D.world_size(), "losses": [h["loss"] for h in result.history],
                   "sha": hashlib.sha256(weights.numpy().tobytes()).hexdigest(), "weights": weights.tolist()}, f)
    D.shutdown()
""")


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process(tmp_path):
    write_corpus(tmp_path / "text", n_docs=12)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [str(tmp_path / "text")]
    subprocess.run([sys.executable, str(driver), *common, str(tmp_path / "single"), str(tmp_path / "cache"), "2"],
                   check=True, env=env, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(driver), *common, str(tmp_path / "ddp"), str(tmp_path / "cache"), "1"],
                   check=True, env=env, timeout=300, capture_output=True)
    r0, r1 = (json.loads((tmp_path / f"ddp.rank{r}.json").read_text()) for r in (0, 1))
    single = json.loads((tmp_path / "single.rank0.json").read_text())
    assert r0["world"] == r1["world"] == 2 and single["world"] == 1
    assert r0["sha"] == r1["sha"]  # bit-identical weights on both ranks
    assert r0["losses"] == r1["losses"]  # the logged loss is the all-reduced one
    # 2 ranks x 1 micro-batch == 1 process x 2 micro-batches (rank r takes batches r, r+2, ...)
    assert r0["losses"] == pytest.approx(single["losses"], rel=1e-5)
    assert torch.allclose(torch.tensor(r0["weights"]), torch.tensor(single["weights"]), atol=1e-5)
    # only rank 0 wrote the run folder: one checkpoint, one metrics file, no stray temporary folders
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["checkpoint", "logs", "metrics.jsonl"]
    state = json.loads((tmp_path / "ddp/checkpoint/train_state/state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 4
