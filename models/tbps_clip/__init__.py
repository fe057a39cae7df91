"""TBPS-CLIP (AAAI 2024) from its released checkpoints, full and simplified.

```python
from tbps_models.tbps_clip.model import load_tbps_clip
model = load_tbps_clip("checkpoint_best.pth")   # .towers, .architecture, .variant
```
"""
