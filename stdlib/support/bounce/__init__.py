"""The bounce classifier: why a message bounced, from the raw message (issue 14).

``message`` parses a bounce, ``features`` turns it into hashed features, ``model`` runs the
shipped network (``Classifier.load().classify(raw)``), ``train`` trains and evaluates it,
``synthetic`` writes the synthetic bounces it also learns from. See README.md here."""
