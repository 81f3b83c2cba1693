"""The ``--ray`` branches of ``bertrt serve`` and ``bertrt predict``: option checks, then ``online`` / ``batch``."""

from __future__ import annotations

import sys

from ..errors import InputError


def require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise InputError('--ray needs Ray: pip install "bertrt[ray]"') from None


def serve_ray(config, limits, *, ray: bool, print_config: bool, address, host: str, port: int, **scaling) -> None:
    """``bertrt serve --ray``: print the Ray Serve config, or deploy and serve until interrupted."""
    from .online import Scaling, config_yaml, deploy

    if print_config and not ray:
        raise InputError("--print-config goes with --ray")
    scaling = Scaling(graceful_timeout=limits.graceful_timeout, **scaling)
    if print_config:
        sys.stdout.write(config_yaml(config, scaling, host="0.0.0.0", port=port))
        return
    require_ray()
    deploy(config, scaling, address=address, host=host, port=port,
           log=lambda m: print(m, file=sys.stderr))


def parse_concurrency(text: str) -> tuple[int, int]:
    """"MIN,MAX" (or one number for a fixed pool) -> (MIN, MAX)."""
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not 1 <= parts[0] <= parts[1]:
        raise InputError(f"--concurrency must be MIN,MAX with 1 <= MIN <= MAX (got {text!r})")
    return parts[0], parts[1]


def predict_ray(artifact, input_path, output, *, texts, address, concurrency: str, fmt: str, rows_per_task: int,
                force: bool, runtime_options: dict) -> None:
    """``bertrt predict --ray``: the dataset through Ray Data into a folder of part files."""
    from tqdm import tqdm

    from ..atomic import check_writable
    from .batch import input_files, predict_dataset

    if texts or input_path is None or output is None:
        raise InputError("with --ray, give the data as -i FILE_OR_FOLDER and the output folder as -o")
    low_high = parse_concurrency(concurrency)
    input_files(input_path)
    check_writable(output, force)
    require_ray()
    import ray

    runtime_options["threads"] = threads = runtime_options.get("threads") or 1  # each actor: its own core(s)
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        with tqdm(unit="input", desc="predict --ray", file=sys.stderr) as bar:
            n = predict_dataset(str(artifact), input_path, output, concurrency=low_high, fmt=fmt,
                                rows_per_task=rows_per_task, runtime_options=runtime_options, force=force,
                                num_cpus=float(threads), progress=bar)
    finally:
        ray.shutdown()
    print(f"{n} rows -> {output}", file=sys.stderr)
