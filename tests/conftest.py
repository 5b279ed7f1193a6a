"""Shared test settings: one torch thread (the test models are tiny; several threads thrash on a busy 2-core CI)."""

import torch

torch.set_num_threads(1)
