"""IRRA-family CLIP checkpoints (IRRA, RDE and forks that keep IRRA's layout) and the CLIP towers
that every CLIP-based method of tbps-bench shares.

```python
from tbps_models.clip_reid import load_checkpoint
model = load_checkpoint("best.pth", family="irra")  # "irra" | "rde" | "auto"; RDE: select_ratio=, embedding=
model.tokenize(captions)            # (n, 77) int64, the authors' token ids
model.similarity(images, captions)  # texts x images, the matrix the authors' evaluator ranks
```
"""

from tbps_models.clip_reid.model import ClipReidModel, load_checkpoint

__all__ = ["ClipReidModel", "load_checkpoint"]
