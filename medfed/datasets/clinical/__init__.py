"""Tabular clinical datasets: breast cancer, UCI heart disease, TCGA-BRCA survival, CSVs."""
