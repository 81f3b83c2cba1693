"""Corpus reading, pretraining examples (MLM + NSP) and task datasets."""
