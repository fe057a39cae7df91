"""``clip``: a CLIP dual encoder from a local ``transformers`` folder, zero-shot or fine-tuned."""
