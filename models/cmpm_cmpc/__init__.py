"""``cmpm-cmpc``: the CMPM + CMPC baseline (Zhang and Lu, ECCV 2018): ResNet-50 and a BiLSTM."""
