"""Training: settings, model inputs, the engine (epoch loop), how runs start, early stopping, trained models."""
