"""Ready-made model containers, one package per framework, each with its Dockerfile."""
