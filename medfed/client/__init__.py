"""Hospital side: the Flower ClientApp and local training."""
