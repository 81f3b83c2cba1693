"""Task rules, written once: how inputs become model rows (``encode``), how a model's outputs become answers
(``decode``), how answers are scored (``metrics``), and running rows through any forward function (``predict``).

Torch-free (numpy and ``tokenizers`` only). Training, checkpoint evaluation, the export gates, bench and the
runtime all call these functions, so for the same logits they reach the same decisions and the same metrics.
"""

LABELLED_TASKS = ("classify", "ner", "multilabel", "relation")  # tasks whose outputs are named by label names
SEQUENCE_TASKS = ("classify", "multilabel")  # one output per input, from the pooled [CLS] vector
