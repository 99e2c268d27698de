"""Using a trained global model at a hospital: predict, validate, explain, serve.

Everything starts from a model folder (``model.safetensors`` + ``model_card.json`` +
``signature.json``): the card's ``preprocessing`` section is the contract that makes new data
look exactly like the training data (scaling moments, feature list, label map, imaging grid and
window). The CLI verifies the signature (``medfed.deploy.signing``) before anything here runs.
"""
