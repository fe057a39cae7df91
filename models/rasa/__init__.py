"""RaSa (Bai et al., IJCAI 2023) and MARS (Ergasti et al., arXiv 2407.04287): released ALBEF
cross-encoders, evaluated with their ITC shortlist and ITM re-ranking."""
