"""A real federation on Flower's Deployment Engine: certificates and keys, model signing, the
coordinator (ServerApp) and the hospitals' SuperNodes, checkpoints and resume, the model
registry and the audit logs. Sits on top of ``medfed.federation``; only ``medfed.cli`` uses it."""
