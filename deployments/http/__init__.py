"""The HTTP surface: the ingress, its routes, auth, limits, schemas and errors."""
