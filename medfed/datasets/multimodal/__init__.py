"""Images joined to clinical data per patient: multimodal site folders, HAM10000."""
