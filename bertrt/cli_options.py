"""Options shared by several ``bertrt`` commands: one help text and one parser each."""

from __future__ import annotations

from enum import Enum
from typing import Optional

import typer


def parse_ints(text: Optional[str], name: str) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]`` (empty or None: ``[]``); a bad value names its option."""
    try:
        return [int(x) for x in (text or "").split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{name} wants comma-separated integers like 1,8,32, not {text!r}") from None


class Long(str, Enum):
    truncate = "truncate"
    chunks = "chunks"


class Backend(str, Enum):
    auto = "auto"
    onnxruntime = "onnxruntime"
    openvino = "openvino"


BACKEND_HELP = ("Inference engine: auto picks the fastest one installed whose variant passed its gates, by the "
                "times the export measured; onnxruntime always works; openvino (CPU) needs an artifact exported "
                "with an OpenVINO variant and the openvino extra. Set it when serving on a CPU other than the "
                "exporting one (measure both with bertrt bench).")
LONG_HELP = ("classify / embed inputs longer than the artifact's max length: truncate (the default; such outputs "
             'say "truncated": true) or chunks (overlapping windows, probabilities or vectors averaged: slower, '
             "but reads the whole text; use it when texts run long). qa contexts and ner texts are always windowed.")


TRUSTED_KEY_HELP = ("Ed25519 public key (PEM, from `bertrt keygen`) the artifact must be signed by (`bertrt sign`); "
                    "repeat it to trust several keys, e.g. while rotating. Unsigned or changed artifacts are "
                    "refused. Use it whenever artifacts reach this machine through hands you do not control.")


WANDB_HELP = ("Also log the scalars (loss, learning rate, evaluations) to this Weights & Biases project (pip install "
              "'bertrt[track]'); WANDB_MODE=offline keeps the run on disk in the run folder's wandb/ for a later "
              "`wandb sync`.")
