"""Ready-made model containers, one package per framework: ``python_closure`` (with its
Dockerfile), ``sklearn``, ``xgboost``, ``lightgbm``, ``onnx`` and ``pytorch``.
``frameworks.py`` says what each framework runtime imports (its pip extra), loads and
accepts."""
