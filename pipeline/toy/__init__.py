"""The toy world (issue 16): synthetic compositional images, their grammar, a programmatic judge and describer."""
