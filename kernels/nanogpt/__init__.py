"""NanoGPT built from the op kernels: the model (model.py), its ops as torch.library custom ops (ops.py),
which kernel each op runs (choice.py), data (data.py) and the training step (train.py)."""
