"""Synthetic speech corpora: command grammar, TTS voices, augmentation, corpus build."""
