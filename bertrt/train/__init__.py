"""The training loop, pretraining and fine-tuning objectives, PEFT and metrics."""
