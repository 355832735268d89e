"""``iap dev``: the embedded default, everything on 127.0.0.1, no configuration needed."""
