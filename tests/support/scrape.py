"""A metrics endpoint read as a test reads it: one request, and the samples of a scrape
(``prometheus_client``'s parser) keyed by (sample name, sorted labels)."""
from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    """(status, body) of ``method path`` on the loopback ``port`` (0, "": no answer)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:
        return 0, ""


def samples(port: int) -> dict[tuple, float]:
    """Every sample of ``/metrics`` on ``port``: {(name, ((label, value), ...)): value}."""
    status, text = get(port, "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}
