"""Training: settings, model inputs, the training loop, early stopping, trained models and checkpoints."""
