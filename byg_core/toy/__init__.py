"""The toy shapes world: a world where the true result of every edit is known.

``world`` defines scenes, exact renders, captions and ground-truth edit tuples; ``metrics``
reads attributes back from pixels and scores edits; ``text`` and ``codec`` are the toy
text encoder and the (identity-like) latent codec the tiny base model uses.
"""
