"""Hospital imaging site folders: DICOM/NIfTI/DICOM-SEG readers, manifest, check, demo."""
