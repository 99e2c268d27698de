"""Clinical time series: PhysioNet 2019 sepsis stays (loader, causal features, demo data)."""
