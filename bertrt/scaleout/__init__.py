"""Scaling out on Ray: ``online`` (``bertrt serve --ray``, a Ray Serve application) and ``batch`` (``bertrt predict
--ray``, Ray Data over a pool of ``Runtime`` actors). Only these modules import Ray, and only when called."""
