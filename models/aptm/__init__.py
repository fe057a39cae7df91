"""APTM (Yang et al., ACM MM 2023): a Swin image encoder and ALBEF's BERT cross-encoder, with the
authors' multi-process score fusion made explicit."""
