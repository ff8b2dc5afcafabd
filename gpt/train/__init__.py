"""Training: optimizer and schedule, callbacks, exact resume, the pretraining and fine-tuning modules."""
