"""Caption backends, one module each; `interface.BACKENDS` names them."""
