"""The bounce classifier: why a message bounced, from the raw message (issue 14).

``message`` parses a bounce, ``features`` turns it into hashed features, ``model`` runs the
shipped network (``Classifier.load().classify(raw)``), ``train`` trains and evaluates it,
``synthetic`` writes the synthetic bounces it also learns from, ``shared`` is the process's
one classifier (loaded on first use; the status codes of ``codes`` decide without a usable
model). See README.md here and docs/bounces.md."""
from pathlib import Path

SHIPPED = Path(__file__).with_name("model.npz")  # the weights the package ships
