"""Security regression tests: each reproduces one attack from the hardening review
(a hostile client, sender domain, DNS server or script) and checks it is closed."""
