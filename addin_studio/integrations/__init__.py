"""Adapters inside the trainers people already use.

- :mod:`addin_studio.integrations.hf`: ``SaveAdaptersCallback`` for Hugging Face ``transformers.Trainer``;
- :mod:`addin_studio.integrations.lightning`: ``AdapterCheckpoint`` for PyTorch Lightning.

Each module imports its framework itself; nothing else in ``addin_studio`` imports them. See
docs/integrations.md.
"""
