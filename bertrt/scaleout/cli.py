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
