"""The training wing: SAR-SFT data, samples, loss and trainer, self-distillation, and the recipe `train()`."""
