"""The CLIP towers every CLIP-based method shares (``clip``, ``irra``, ``rde``, ``plot``,
``tbps-clip``): ``transformers.CLIPModel`` on person images (``backbone``), the architecture and key
set of OpenAI-layout states (``architecture``), reading them from released files (``towers``), the
BPE tokenizer (``tokenizer``), and each method's differences as data (``preset``). No method folder
owns this package; each method keeps its own heads and its preset beside it."""
