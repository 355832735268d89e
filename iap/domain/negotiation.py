"""Content negotiation for iap's own answers (RFC 9110 §12.5.1)."""

from __future__ import annotations


def _weights(accept: str) -> dict[str, float]:
    weights: dict[str, float] = {}
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        weight = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if media:
            weights[media.lower()] = max(weight, weights.get(media.lower(), 0.0))
    return weights


def prefers_html(accept: str | None) -> bool:
    """True when ``accept`` ranks ``text/html`` above JSON: a browser navigation."""
    if not accept:
        return False
    weights = _weights(accept)
    html = weights.get("text/html", weights.get("application/xhtml+xml", 0.0))
    json = weights.get("application/json", weights.get("*/*", 0.0))
    return html > 0.0 and html >= json
