"""What the native namespaces share and are not namespaces themselves: the mail model
(``mail``), option maps (``options``), check results (``result``), the bridge from
synchronous libraries to the ``dns::`` resolver (``dnsbridge``), and the signing keys,
key records and message form of ``dkim::``, ``dmarc::`` and ``arc::`` (``signing``), the
store where ``limit::`` and ``greylist::`` keep their counts (``state``), and the Redis
and AMQP URLs of the server's configuration, checked and redacted (``urls``)."""
