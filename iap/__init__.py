"""iap: an identity-aware proxy for the edge of a Kubernetes + Istio service mesh."""

__all__ = ["__version__"]

__version__ = "0.1.0.dev0"
