"""vSL: the language (this package), with its natives (vsl.stdlib), the SMTP server (vsl.server)
and the command line (vsl.cli) installed beneath it."""
