"""The ``bertrt`` command line: one command per pipeline stage.

Commands parse their options and call the library; heavy imports (torch, onnx, onnxruntime) happen inside the
command that needs them, so ``bertrt --help`` is instant. Errors a user can fix print one line on stderr and exit 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from . import __version__
from .cli_augment import app as augment_app
from .cli_bench import app as bench_app
from .cli_export import app as export_app
from .cli_security import app as security_app
from .cli_serve import app as serve_app
from .cli_train import app as train_app
from .errors import BertrtError

app = typer.Typer(
    help="bertrt: train, compress, export and serve BERT models, from raw text to a verified ONNX artifact.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None,
)
tokenizer_app = typer.Typer(help="Train and inspect WordPiece tokenizers.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(tokenizer_app, name="tokenizer")
# Top-level commands kept in their own modules, each a group of one stage:
app.add_typer(train_app)  # pretrain, prune, finetune, evaluate, ensemble, zeroshot
app.add_typer(augment_app)  # augment
app.add_typer(export_app)  # export, verify, info
app.add_typer(bench_app)  # bench, demo
app.add_typer(serve_app)  # predict, serve
app.add_typer(security_app)  # keygen, sign, mask


def _version(value: bool):
    if value:
        typer.echo(f"bertrt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    pass


# ---------------------------------------------------------------------------------------------------- tokenizer
@tokenizer_app.command("train")
def tokenizer_train(
    files: list[Path] = typer.Argument(..., help="UTF-8 text files to learn the vocabulary from."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder to write tokenizer.json, vocab.txt and "
                                "tokenizer_config.json into (created atomically)."),
    vocab_size: int = typer.Option(30522, help="Vocabulary size including special tokens. Smaller corpora want "
                                   "smaller vocabularies (8k-16k for a few MB of text)."),
    lowercase: bool = typer.Option(True, "--lowercase/--no-lowercase", help="Lowercase and strip accents "
                                   "(uncased BERT). Use --no-lowercase when case carries meaning, e.g. for NER."),
    min_frequency: int = typer.Option(2, help="Ignore pieces seen fewer times than this."),
    force: bool = typer.Option(False, "--force", help="Replace the output folder if it exists."),
):
    """Train a BERT WordPiece tokenizer (CJK characters split one per token, [CLS]/[SEP]/[MASK] specials)."""
    from .atomic import atomic_dir
    from .tokenizer import save_tokenizer, train_tokenizer

    with atomic_dir(output, force) as tmp:
        tok = train_tokenizer(files, vocab_size=vocab_size, lowercase=lowercase, min_frequency=min_frequency)
        fp = save_tokenizer(tok, tmp)
    typer.echo(f"wrote {output} (vocabulary {tok.get_vocab_size()}, fingerprint {fp[:16]})")


def main():
    """Console entry point: run the app, turning bertrt's errors into one line on stderr."""
    try:
        app()
    except BertrtError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
