"""Learned transforms, entropy coding, the slice chunks (:mod:`bmz.codec.chunks`) and the model zoo."""
