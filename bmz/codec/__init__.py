"""Learned transforms, entropy coding and the slice pipeline."""

import warnings

# CompressAI 1.2 decorates helpers with torch.jit.script, which torch 2.14 flags as deprecated on
# import; the message says nothing to bmz's users.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
