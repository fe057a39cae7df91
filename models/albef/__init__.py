"""Parts shared by the ALBEF family of cross-encoders (RaSa, MARS, APTM): the BERT whose later layers
attend to image tokens, the ViT, and the BERT WordPiece rule of their tokenizer copy."""
