"""``bertrt augment``: write augmented training data (merged into the main app by ``bertrt/cli.py``; thin over
``bertrt.data.augment`` and, for ``--method mlm``, ``bertrt.train.augment``)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

app = typer.Typer(rich_markup_mode=None)  # help texts say bertrt[extra]: not rich markup


class DataTask(str, Enum):
    """The tasks that have labelled training data (``finetune --task`` and ``augment --task``)."""

    classify = "classify"
    multilabel = "multilabel"
    relation = "relation"
    ner = "ner"
    qa = "qa"


class AugmentMethod(str, Enum):
    eda = "eda"
    mlm = "mlm"


@app.command("augment")
def augment_command(
    data: Path = typer.Argument(..., help="Training data in the task's format (as for finetune)."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the originals followed by their "
                                "variants: JSONL (ner: tokens/tags JSONL; qa: SQuAD v1.1 JSON), written atomically."),
    task: DataTask = typer.Option(..., "--task", help="The data's task: it decides what must stay intact (NER "
                                     "entities, QA answers, relation spans)."),
    method: AugmentMethod = typer.Option(AugmentMethod.eda, "--method", help="eda: random swaps, deletions or "
                                         "insertions of the text's own words (offline, fast); mlm: masked words "
                                         "refilled by --from's masked-LM head (fluent, needs a model)."),
    per_example: int = typer.Option(1, "--per-example", help="Variants written per example. EDA's authors found "
                                    "more help on very small sets (16 per example below 500 examples, 4 beyond)."),
    from_: Path = typer.Option(None, "--from", help="--method mlm: a checkpoint with a masked-LM head (bertrt "
                               "pretrain output, or any BERT continued with pretrain --from)."),
    rate: float = typer.Option(None, help="Share of the free words edited or masked (default 0.1 for eda, 0.15 for "
                               "mlm). Higher gives more varied, noisier text."),
    seed: int = typer.Option(0, help="The same data, method and seed give the same variants."),
    device: str = typer.Option("auto", help="--method mlm: auto (CUDA if available), cpu or cuda."),
    force: bool = typer.Option(False, "--force", help="Replace --output if it exists."),
):
    """Augment training data: EDA-style edits or masked-LM substitution, labels kept aligned."""
    from .atomic import write_file_atomic
    from .data import tasks as T
    from .data.augment import augment, check_output_name, task_file_text
    from .errors import BertrtError

    check_output_name(task.value, output)
    if output.exists() and not force:  # before any model is loaded
        raise BertrtError(f"{output} already exists; pass --force to replace it")
    examples = T.read_task(data, task.value)
    filler = None
    if method == AugmentMethod.mlm:
        if from_ is None:
            raise BertrtError("--method mlm needs --from CHECKPOINT (a model with a masked-LM head)")
        from .train.augment import MlmFiller

        filler = MlmFiller(from_, device)
    variants = augment(task.value, examples, method.value, per_example, seed=seed, rate=rate, filler=filler)
    write_file_atomic(output, task_file_text(task.value, examples + variants), force=force)
    typer.echo(f"wrote {output} ({len(examples)} examples and {len(variants)} variants)")
