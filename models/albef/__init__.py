"""ALBEF-style cross-encoders (RaSa, MARS): a ViT, a BERT whose later layers attend to the image
tokens, an image-text matching head, and the authors' caption cleaning and tokenizer rule."""
