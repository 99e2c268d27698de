"""Researcher side: virtual hospitals on one machine, baselines and reports."""
