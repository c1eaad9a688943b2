"""GGUF conversion's failure path and what it leaves behind (the real conversion runs on a fresh `make run`)."""

import pytest

from alignkit import AlignkitError


def test_a_file_that_is_not_a_model_is_an_error_and_gguf_is_left_as_it_was(tmp_path):
    """A truncated GGUF is a one-line error, no directory is left at the destination, and the tensor-name map
    memoised for the conversion is gguf's own function again afterwards."""
    import gguf

    from alignkit.models.load import _convert_gguf

    before = gguf.get_tensor_name_map
    bad = tmp_path / "m.gguf"
    bad.write_bytes(b"GGUF\x03\x00")
    with pytest.raises(AlignkitError, match=r"m\.gguf: cannot read this GGUF file .*truncated or not a model"):
        _convert_gguf(bad, tmp_path / "dest")
    assert gguf.get_tensor_name_map is before and not hasattr(before, "cache_info")
    assert not (tmp_path / "dest").exists()
