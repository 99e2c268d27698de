"""Coordinator side: the Flower ServerApp, the round loop, checkpoints, tracking."""
