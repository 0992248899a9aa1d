import os
import sys

import torch

# Baselines and input builders come from the tests, so benchmarks time exactly what is tested.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
