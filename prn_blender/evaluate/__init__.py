"""Evaluation: landmark metrics, the AFLW2000-3D loader, the 3DDFA_V2 peer and the evaluation runner."""
