"""Text generation backends, shared by the generate and evaluate stages."""
