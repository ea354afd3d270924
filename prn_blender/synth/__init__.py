"""Synthetic face data engine: ICT-FaceKit model, sampler, renderer."""
