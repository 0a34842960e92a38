"""Negative generators, one module each; `interface.GENERATORS` names them."""
