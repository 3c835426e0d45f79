"""Model export, evaluation and inference helpers; independent of Django."""
