"""The pipeline on whole sections: features, fitting, prediction, super-resolution and recovery."""
