"""Serving: a TF-Serving-compatible server (REST and gRPC) over every artifact of a
published version (``python -m tfdeploy.serve``)."""
