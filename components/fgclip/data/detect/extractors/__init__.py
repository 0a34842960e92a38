"""Expression extractors, one module each; `expressions.EXTRACTORS` names them."""
