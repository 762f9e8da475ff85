"""The bundled SMTP server: aiosmtpd front end, policy stages, durable spool."""
