"""``bertrt bench``: check every variant's outputs against the reference, then time it, next to the peers a user
would pick instead (PyTorch eager fp32 / bf16 autocast / dynamic INT8, ONNX Runtime on a plain export in fp32 and
dynamic INT8), all in one process on the same data and threads.

Modules: ``machine`` (CPU, versions, commit), ``measure`` (timing and peak memory of any predictor), ``gate``
(reference predictions and the agreement / metric gate), ``variants`` (bertrt artifacts through ``Runtime``),
``peers`` (the torch and ONNX Runtime peers), ``run`` (the orchestration), ``report`` (JSON, Markdown, plots),
``schema`` (the JSON schema bench.json must satisfy).
"""
