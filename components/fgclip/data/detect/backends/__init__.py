"""Detector backends, one module each; `interface.DETECTORS` names them."""
