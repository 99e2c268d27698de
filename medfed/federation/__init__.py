"""The federation itself: the Flower ServerApp and ClientApp, the round loop, the message
keys both sides share, local training. The same code runs in simulation and at real sites."""
