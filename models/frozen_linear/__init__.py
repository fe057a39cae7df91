"""``frozen-linear``: real pretrained encoders that install offline, frozen, with linear projections
trained by CMPM on cached features (seconds on a CPU)."""
