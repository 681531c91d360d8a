"""Evaluation scripts: ``python -m imagebind_llm.eval toyworld --seed S --n N``."""
