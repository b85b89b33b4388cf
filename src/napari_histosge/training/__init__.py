"""Training: settings, model inputs, the engine (epoch loop), how a run starts, early stopping, trained models, checkpoints."""
