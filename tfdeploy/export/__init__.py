"""Exporters: each writes one artifact format atomically and can run it for evaluation."""
import os


def next_version(root):
    """One above the highest numeric version directory under ``root`` (TF Serving layout)."""
    if not os.path.isdir(root):
        return 1
    versions = [int(d) for d in os.listdir(root) if d.isdigit()]
    return max(versions, default=0) + 1


def dir_size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
               for f in files)
