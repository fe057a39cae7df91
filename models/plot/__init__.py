"""PLOT (ECCV 2024) from its released checkpoints.

```python
from tbps_models.plot.model import load_plot
model = load_plot("best.pth")              # iterations=5, the authors' default
model.similarity(pixels, token_ids)        # texts x images, the matrix the authors' evaluator ranks
```
"""
