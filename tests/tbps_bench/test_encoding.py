"""Encoding: long captions give no false warning."""

from __future__ import annotations


def test_long_captions_give_no_false_indexing_warning(tmp_path, capfd):
    from tbps_models.clip.method import ClipMethod

    from tiny_clip import TINY_CLIP

    method = ClipMethod(model=str(TINY_CLIP))
    capfd.readouterr()
    tokens = method.tokenize(["a man in a long coat " * 30])
    assert bool(tokens["truncated"][0])
    captured = capfd.readouterr()
    assert "indexing errors" not in captured.err + captured.out
