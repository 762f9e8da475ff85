"""Synthetic bounces written from MTA knowledge, so the model meets wordings and MTA
families that the labelled file does not have.

Design: a reason is described by what a remote server says for it (``DIAGNOSTICS``: short
diagnostics in several phrasings and languages, written for this project from RFC 3463 /
RFC 5248 meanings and from the way common MTAs word their replies), the reply and enhanced
codes that usually come with it (``CODES``) and the SMTP phase it is answered at. An
``Envelope`` then wraps one diagnostic the way one MTA family reports it: Postfix's bounce
service, Exim, OpenSMTPD, Exchange / Office 365 NDRs, Yahoo, Haraka, Zimbra, a bare RFC 3464
report, or a localised notice. Every sample is drawn from a seeded ``random.Random``, so the
set is reproducible. Nothing here is derived from the labelled training file.

``reword`` applies generic rewordings (compound words split, letters dropped or swapped,
case changes) used both to augment training and to check robustness.
"""
from __future__ import annotations

import random

# Reply code, enhanced code, phase ("rcpt", "data", "mail", "connect", "" for none).
CODES: dict[str, list[tuple[str, str, str]]] = {
    "userunknown": [("550", "5.1.1", "rcpt"), ("550", "5.1.0", "rcpt"), ("553", "5.1.1", "rcpt"),
                    ("550", "5.1.10", "rcpt"), ("551", "5.1.1", "rcpt"), ("550", "", "rcpt")],
    "mailboxfull": [("552", "5.2.2", "rcpt"), ("452", "4.2.2", "rcpt"), ("550", "5.2.2", "data"),
                    ("452", "4.2.2", "data"), ("552", "", "data")],
    "filtered": [("550", "5.7.1", "data"), ("550", "5.1.1", "data"), ("554", "5.7.1", "data"),
                 ("550", "5.2.1", "data")],
    "rejected": [("550", "5.7.1", "mail"), ("553", "5.1.8", "mail"), ("550", "5.1.0", "mail"),
                 ("501", "5.1.7", "mail"), ("550", "5.7.1", "")],
    "blocked": [
        ("554", "5.7.1", "connect"), ("550", "5.7.1", "connect"), ("421", "4.7.0", "connect"),
                ("554", "", "connect"), ("550", "5.7.606", "rcpt"), ("553", "5.7.1", "helo")],
    "spamdetected": [("550", "5.7.1", "data"), ("554", "5.7.1", "data"), ("550", "5.7.350", "data"),
                     ("554", "", "data")],
    "expired": [("", "4.4.7", ""), ("", "5.4.7", ""), ("", "4.4.1", ""), ("", "", "")],
    "hostunknown": [("", "5.1.2", ""), ("550", "5.1.2", "rcpt"), ("", "5.4.4", ""), ("", "", "")],
    "networkerror": [("", "4.4.1", "connect"), ("", "4.4.2", ""), ("", "5.4.6", ""),
                     ("421", "4.4.2", "connect"), ("", "4.4.0", "")],
    "authfailure": [("550", "5.7.26", "data"), ("550", "5.7.23", "data"), ("550", "5.7.25", "data"),
                    ("550", "5.7.1", "data"), ("451", "4.7.26", "data"), ("550", "5.7.20", "data")],
    "requireptr": [
        ("550", "5.7.25", "connect"), ("450", "4.7.1", "connect"), ("550", "5.7.1", "helo"),
                   ("421", "4.7.0", "connect")],
    "suspend": [("550", "5.2.1", "rcpt"), ("554", "5.2.1", "rcpt"), ("450", "4.2.1", "rcpt"),
                ("550", "5.1.1", "rcpt")],
    "policyviolation": [
        ("550", "5.7.1", "data"), ("554", "5.7.1", "data"), ("550", "5.7.0", "rcpt")],
    "securityerror": [("530", "5.7.0", "mail"), ("535", "5.7.8", "auth"), ("550", "5.7.1", "mail"),
                      ("554", "5.7.5", "data")],
    "systemerror": [("451", "4.3.0", "data"), ("554", "5.3.0", "data"), ("550", "5.4.6", "rcpt"),
                    ("451", "4.3.5", "rcpt"), ("", "5.3.5", "")],
    "mesgtoobig": [("552", "5.3.4", "data"), ("552", "5.3.4", "mail"), ("552", "5.2.3", "data")],
    "exceedlimit": [("552", "5.2.3", "data"), ("552", "5.2.2", "data"), ("550", "5.2.3", "data")],
    "toomanyconn": [
        ("421", "4.7.0", "connect"), ("421", "4.3.2", "connect"), ("452", "4.5.3", "rcpt"),
                    ("450", "4.7.1", "connect")],
    "speeding": [("421", "4.7.28", "data"), ("450", "4.7.1", "rcpt"), ("451", "4.7.1", "mail"),
                 ("550", "5.7.1", "rcpt")],
    "norelaying": [("550", "5.7.1", "rcpt"), ("554", "5.7.1", "rcpt"), ("553", "5.7.1", "rcpt"),
                   ("550", "5.7.64", "rcpt")],
    "notaccept": [("556", "5.1.10", "rcpt"), ("550", "5.1.10", ""), ("554", "5.7.27", "rcpt"),
                  ("521", "5.3.2", "connect")],
    "onhold": [("", "5.0.0", ""), ("", "", "")],
    "hasmoved": [("551", "5.1.6", "rcpt"), ("550", "5.1.6", "rcpt")],
    "virusdetected": [("554", "5.7.1", "data"), ("550", "5.7.0", "data")],
    "badreputation": [
        ("421", "4.7.0", "data"), ("550", "5.7.1", "data"), ("554", "5.7.1", "connect")],
    "contenterror": [("554", "5.6.0", "data"), ("550", "5.6.0", "data"), ("554", "5.6.1", "data")],
    "notcompliantrfc": [
        ("550", "5.7.1", "data"), ("554", "5.6.0", "data"), ("550", "5.6.0", "data")],
    "syntaxerror": [("501", "5.5.4", "mail"), ("500", "5.5.2", "rcpt"), ("501", "5.5.2", "helo"),
                    ("553", "5.1.3", "rcpt")],
    "mailererror": [("", "5.3.0", ""), ("554", "5.3.0", "data"), ("", "", "")],
    "failedstarttls": [("530", "5.7.0", "mail"), ("454", "4.7.0", "starttls"), ("", "4.7.5", "")],
    "systemfull": [("452", "4.3.1", "rcpt"), ("452", "4.3.1", "data"), ("552", "5.3.1", "data")],
}

DIAGNOSTICS: dict[str, list[str]] = {
    "userunknown": [
        "User unknown", "user unknown in local recipient table", "No such user here",
        "no such user", "Recipient address rejected: User unknown in virtual mailbox table",
        "The email account that you tried to reach does not exist",
        "mailbox unavailable", "Mailbox does not exist", "Unknown recipient",
        "recipient not found", "Invalid recipient", "Addressee unknown",
        "unknown user account", "This user doesn't have an account here", "user not found",
        "No mailbox here by that name", "Address rejected: no such recipient",
        "The recipient's address does not exist in the directory",
        "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        "The email address you entered couldn't be found",
        "Sorry, no mailbox here by that name", "account does not exist",
        "bad destination mailbox address",
        "This address no longer accepts mail", "Unrouteable address", "unknown local part",
        "Requested action not taken: mailbox unavailable (user does not exist)",
        "no valid recipients", "recipient rejected: address unknown",
        "Destinataire inconnu", "Adresse invalide, ce compte n'existe pas",
        "Empfaenger unbekannt", "Benutzer unbekannt", "Unbekannter Empfänger",
        "Usuario desconocido", "El destinatario no existe", "Destinatário desconhecido",
        "usuário inexistente", "Пользователь не найден", "нет такого пользователя",
        "该用户不存在", "收件人地址不存在", "宛先のユーザーは存在しません", "ユーザが見つかりません",
    ],
    "mailboxfull": [
        "Mailbox full", "mailbox is full", "Quota exceeded", "user is over quota",
        "The email account that you tried to reach is over quota",
        "Mailbox size limit exceeded", "recipient mailbox full", "Disk quota exceeded",
        "account storage is full", "Insufficient space in mailbox",
        "mailbox has exceeded its storage limit",
        "The user's mailbox is full", "over quota: message would exceed the mailbox size",
        "mail box is full, try again later",
        "Requested mail action aborted: exceeded storage allocation",
        "inbox is full", "recipient has run out of storage space",
        "Boîte aux lettres pleine", "boite pleine, quota dépassé", "Postfach voll",
        "Speicherplatz des Postfachs ist erschöpft", "Buzón lleno",
        "la cuota del buzón está excedida",
        "Caixa postal cheia", "Почтовый ящик переполнен", "邮箱已满", "メールボックスの容量を超えています",
    ],
    "filtered": [
        "This recipient has blocked your messages", "message discarded by a user rule",
        "recipient refuses mail from this address",
        "The recipient has set a filter that rejects this message",
        "Recipient address rejected: Access denied by recipient's filter",
        "message rejected by the recipient's filter rules",
        "Delivery not authorized, message refused",
        "The user does not accept mail from this sender", "Sender is in the recipient's blocklist",
        "This recipient only accepts mail from approved senders",
        "message refused by recipient's preferences", "rejected by user filter",
        "user has blocked your address", "recipient does not want mail from you",
        "Mail refused by the recipient's content rules",
        "Nachricht vom Filter des Empfängers abgewiesen",
        "Message refusée par le filtre du destinataire",
        "rechazado por el filtro del destinatario", "受信拒否設定により拒否されました",
    ],
    "rejected": [
        "Sender address rejected: Access denied", "The sender's domain is not allowed",
        "Mail from this sender is refused", "sender address does not exist", "Return path rejected",
        "Absender-Domain existiert nicht", "domaine de l'expéditeur inconnue",
        "Sender address rejected: Domain not found", "Sender address rejected: not owned by user",
        "sender rejected", "Envelope sender rejected", "Your address is not allowed to send here",
        "Sender verify failed", "sender domain does not exist", "MAIL FROM address rejected",
        "Sender denied", "sender address is blacklisted", "invalid sender address",
        "rejected: sender's domain has no MX record", "We do not accept mail from this sender",
        "Only members can post to this list", "you are not allowed to post to this group",
        "Expéditeur refusé", "Absender abgelehnt", "Remitente rechazado", "送信者アドレスが拒否されました",
    ],
    "blocked": [
        "Client host [192.0.2.1] blocked using bl.spamcop.net",
        "Service unavailable; client host rejected",
        "Connection refused: your IP is not allowed to connect",
        "Mail from your IP address has been rejected", "Sending host is on a blocklist",
        "access denied for this client, listed at dnsbl", "Too much bad mail from your IP, blocked",
        "Service unavailable; Client host blocked using zen.spamhaus.org",
        "Your IP address is listed in a DNS blocklist", "Connection refused by blacklist",
        "client host rejected: Access denied", "IP address blacklisted", "your host is blocked",
        "Blocked - see https://www.spamcop.net/bl.shtml", "Access denied, banned sending IP",
        "Connection rejected by policy: IP on blocklist",
        "Message rejected because the sending IP is listed",
        "Our system has blocked connections from your network", "Host refused: listed on RBL",
        "Your mail server has been blocked", "poor IP reputation, connection refused",
        "Votre adresse IP est bloquée", "IP-Adresse gesperrt", "Dirección IP bloqueada",
        "あなたのIPアドレスはブロックされています", "Ваш IP-адрес заблокирован",
    ],
    "spamdetected": [
        "Message rejected as spam", "This message has been classified as spam",
        "Spam message rejected",
        "Our system has detected that this message is likely unsolicited mail",
        "content rejected: spam score too high", "message looks like spam",
        "Blocked by spam filter", "Spam detected", "high probability of spam",
        "Message content rejected, UBE", "junk mail rejected by content scanner",
        "Message identifié comme spam", "Nachricht als Spam eingestuft",
        "Mensaje detectado como spam",
        "Сообщение похоже на спам", "邮件被识别为垃圾邮件", "迷惑メールと判定されました",
    ],
    "expired": [
        "retry timeout exceeded", "message expired, gave up after 5 days",
        "Delivery time expired", "The message has been in the queue too long",
        "could not be delivered within the retry period",
        "delivery temporarily suspended; message expired",
        "Message expired after too many delivery attempts",
        "giving up after repeated temporary failures",
        "timed out waiting for delivery", "maximum queue lifetime exceeded",
        "Message could not be delivered for 4 days", "Délai de remise expiré",
        "Zustellung nach mehreren Tagen aufgegeben", "Tiempo de entrega expirado",
        "配信期限を過ぎました", "投递超时",
    ],
    "hostunknown": [
        "Host or domain name not found. Name service error: Host not found",
        "Domain not found", "unknown host", "no such domain", "Domain does not exist",
        "all relevant MX records point to non-existent hosts",
        "DNS lookup of the domain failed: NXDOMAIN",
        "the recipient domain has no mail servers", "Recipient address rejected: Domain not found",
        "domain name does not resolve", "Hôte ou domaine introuvable", "Domäne existiert nicht",
        "Dominio no encontrado", "ドメインが存在しません", "域名不存在",
    ],
    "networkerror": [
        "connect to mx.example.net: Connection timed out", "Connection refused",
        "No route to host", "lost connection with mx.example.net while sending message body",
        "Network is unreachable",
        "conversation timed out while receiving the initial server greeting",
        "Connection reset by peer", "read error: timeout", "too many hops, mail loop detected",
        "could not connect to the remote host", "temporary network failure",
        "La connexion a expiré", "Verbindung abgelehnt", "Conexión rechazada", "接続がタイムアウトしました",
    ],
    "authfailure": [
        "SPF check failed", "Message rejected due to SPF failure",
        "DMARC policy violation: unauthenticated email is not accepted",
        "DKIM signature verification failed", "sender does not pass SPF",
        "Email rejected per DMARC policy for the domain", "SPF: sending host is not permitted",
        "rejected because it failed authentication checks", "SPF fail - not authorized",
        "DMARC reject: the From domain does not align",
        "the message failed DKIM and SPF authentication",
        "Échec de l'authentification SPF", "SPF-Prüfung fehlgeschlagen",
        "fallo de autenticación DMARC",
        "SPF認証に失敗しました",
    ],
    "requireptr": [
        "Client host rejected: cannot find your reverse hostname",
        "no PTR record for your IP address", "Reverse DNS lookup failed for your IP",
        "The sending IP has no reverse DNS", "IP address does not resolve to a hostname",
        "rDNS required", "missing reverse DNS entry", "PTR record does not match the HELO name",
        "kein Reverse-DNS-Eintrag", "pas d'enregistrement PTR", "逆引きできません",
    ],
    "suspend": [
        "mailbox locked by administrator", "user account is suspended",
        "account disabled", "This account has been suspended", "mailbox disabled",
        "The mailbox is inactive", "user account is expired", "Account temporarily frozen",
        "recipient account is locked", "mailbox temporarily disabled", "account is not active",
        "This mailbox has been deactivated", "Compte désactivé", "Konto gesperrt",
        "Cuenta suspendida", "Conta desativada", "アカウントが停止されています", "账户已冻结",
    ],
    "policyviolation": [
        "blocked by content policy", "banned attachment",
        "Message rejected due to local policy", "rejected for policy reasons",
        "This message violates our email policy", "Message refused by policy",
        "prohibited attachment type", "messages with executable attachments are not accepted",
        "Delivery not allowed by organization policy", "Rejected by the transport rule",
        "The message was blocked by the recipient organization's policy",
        "Refusé par la politique de sécurité", "Richtlinienverstoß", "Violación de la política",
    ],
    "securityerror": [
        "Authentication required", "SMTP AUTH required before sending",
        "Client was not authenticated", "authentication failed: invalid credentials",
        "Must issue a STARTTLS command first", "you must authenticate first",
        "Encryption required for requested authentication mechanism",
        "insecure connection not allowed",
        "Authentification requise", "Authentifizierung erforderlich", "Se requiere autenticación",
    ],
    "systemerror": [
        "local error: unable to process the message",
        "Requested action aborted: error in processing",
        "Local configuration error", "Internal server error", "temporary system failure",
        "mail forwarding loop", "mail for the domain loops back to myself",
        "system error, try later",
        "Requested action aborted: local error in processing", "server is misconfigured",
        "delivery failed due to an internal error", "Erreur système", "Systemfehler",
        "Error del sistema", "システムエラーが発生しました", "系统错误",
    ],
    "mesgtoobig": [
        "Message size exceeds fixed maximum message size", "Message too large",
        "message exceeds the maximum size allowed", "Message size exceeds server limit",
        "The message was too big to deliver", "size limit exceeded for this server",
        "message file too big", "Message trop volumineux", "Nachricht zu groß",
        "Mensaje demasiado grande", "メッセージサイズが大きすぎます", "邮件太大",
    ],
    "exceedlimit": [
        "Message exceeds the recipient's size limit",
        "message size exceeds the limit for this recipient",
        "Recipient's message size limit exceeded",
        "the recipient does not accept messages this large",
        "per-user message size limit exceeded",
    ],
    "toomanyconn": [
        "too many connections per hour from your IP", "connection rate limit exceeded",
        "Too many sessions open, try later",
        "Too many connections from your IP", "too many concurrent SMTP connections",
        "Too many connections, try again later", "connection limit exceeded for your host",
        "Too many recipients", "Too many simultaneous connections", "Trop de connexions",
        "Zu viele Verbindungen", "Demasiadas conexiones",
    ],
    "speeding": [
        "daily sending quota exceeded",
        "Rate limit exceeded, try again later", "You are sending too fast",
        "too many messages in a short time", "sending rate exceeded for this sender",
        "Message rate limit reached, please slow down",
        "Receiving mail at a rate that prevents additional messages",
    ],
    "norelaying": [
        "Relay access denied", "Relaying denied", "we do not relay", "relay not permitted",
        "Unable to relay", "relaying not allowed", "This server does not relay for your domain",
        "Relais refusé", "Relaying nicht erlaubt", "No se permite el reenvío",
        "中継は許可されていません",
    ],
    "notaccept": [
        "This domain does not accept mail", "Domain does not accept email (null MX)",
        "Host does not accept mail", "we do not accept mail for this domain",
        "This server does not receive email", "mail not accepted for this domain",
    ],
    "onhold": [
        "message held for review", "the message is on hold", "delivery deferred, message held",
        "message quarantined pending administrator review",
    ],
    "hasmoved": [
        "User has moved; please try the new address", "this user has moved to another address",
        "User not local; please try the forward path", "mailbox has moved, the new address is",
        "Le destinataire a changé d'adresse", "Empfänger ist umgezogen",
    ],
    "virusdetected": [
        "Virus found in message", "message contains a virus", "infected attachment rejected",
        "Malware detected, message rejected", "Virus détecté", "Virus gefunden", "ウイルスが検出されました",
    ],
    "badreputation": [
        "the IP you are sending from has a poor reputation",
        "sending domain has a low reputation", "message rejected due to poor sender reputation",
        "Your IP has been temporarily rate limited due to reputation",
        "IP reputation too low to accept mail",
    ],
    "contenterror": [
        "message content invalid", "Invalid message content", "illegal characters in the message",
        "malformed MIME structure", "message body contains invalid encoding",
        "header line too long",
    ],
    "notcompliantrfc": [
        "Message is not RFC 5322 compliant", "duplicate From header",
        "message has multiple Date headers",
        "missing required header: Date", "message does not conform to RFC 5322",
        "bare LF in message body, not compliant",
    ],
    "syntaxerror": [
        "Syntax error in parameters or arguments", "Command unrecognized", "syntax error",
        "Bad command sequence", "invalid address syntax", "line too long", "Syntaxfehler",
        "erreur de syntaxe",
    ],
    "mailererror": [
        "Command died with status 1", "mailer program exited with an error",
        "procmail: Error while writing to mailbox", "delivery command failed with exit code 75",
        "unknown mailer error 1", "local delivery agent crashed",
    ],
    "failedstarttls": [
        "STARTTLS failed", "TLS negotiation failed", "Cannot start TLS: handshake failure",
        "TLS is required but the server does not support STARTTLS",
        "certificate verification failed during STARTTLS",
    ],
    "systemfull": [
        "Insufficient system storage", "mail system full", "disk full on the mail server",
        "out of disk space, try again later", "no space left on device",
    ],
}

VACATION = [
    "I am out of the office until Monday and will reply when I return.",
    "Thank you for your message. I am on vacation with limited access to email.",
    "This is an automatic reply: I'm away and will answer your mail next week.",
    "Je suis absent du bureau jusqu'au 15 et je répondrai à mon retour.",
    "Ich bin bis zum 20. nicht im Büro und habe keinen Zugriff auf meine E-Mails.",
    "Estoy fuera de la oficina hasta el lunes.", "Estou de férias e retorno na próxima semana.",
    "Меня нет в офисе до понедельника.", "休暇中のため、返信が遅れます。", "我正在休假，回来后回复您。",
]

# How often a reason is drawn, relative to 1: the common ones of any mail system more often.
PRIOR = {"userunknown": 4, "mailboxfull": 2, "expired": 2, "filtered": 2, "rejected": 2,
         "blocked": 2, "spamdetected": 1.5, "hostunknown": 1.5, "networkerror": 1.5}

LOCAL, HOSTS = ["kijitora", "neko", "alice", "bob", "sales", "info", "m.tanaka", "contact"], \
    ["example.com", "example.net", "example.org", "mail.example.jp", "example.fr", "example.de"]


def reword(text: str, rng: random.Random, case: bool = True) -> str:
    """A generic rewording: compound words split, a letter dropped or swapped, and (with
    ``case``) the case changed."""
    words = text.split(" ")
    for i, word in enumerate(words):
        roll = rng.random()
        if roll < 0.12 and len(word) >= 7 and word.isalpha():
            cut = rng.randrange(3, len(word) - 3)
            words[i] = word[:cut] + " " + word[cut:]
        elif roll < 0.18 and len(word) >= 5 and word.isalpha():
            cut = rng.randrange(1, len(word) - 1)
            words[i] = word[:cut] + word[cut + 1:]
        elif roll < 0.22 and len(word) >= 5 and word.isalpha():
            cut = rng.randrange(1, len(word) - 2)
            words[i] = word[:cut] + word[cut + 1] + word[cut] + word[cut + 2:]
    text = " ".join(words)
    roll = rng.random() if case else 1.0
    return text.upper() if roll < 0.1 else text.lower() if roll < 0.25 else text


def samples(count: int, seed: int = 14) -> list[dict]:
    """``count`` synthetic labelled bounces, ``{"text", "reason", "group"}``, reproducible."""
    rng = random.Random(seed)
    reasons = sorted(DIAGNOSTICS) + ["vacation", "feedback", "delivered"]
    weights = [PRIOR.get(reason, 1.0) for reason in reasons]
    out = []
    for _ in range(count):
        reason = rng.choices(reasons, weights)[0]
        envelope = rng.choice(ENVELOPES)
        out.append({"text": _message(reason, envelope, rng), "reason": reason,
                    "group": "synthetic-" + envelope.__name__.strip("_")})
    return out


def _message(reason: str, envelope, rng: random.Random) -> str:
    rcpt = f"{rng.choice(LOCAL)}@{rng.choice(HOSTS)}"
    if reason == "vacation":
        return _autoreply(rcpt, rng)
    if reason == "feedback":
        return _arf(rcpt, rng)
    if reason == "delivered":
        return _dsn(rcpt, "delivered", "2.0.0", "250 2.0.0 OK queued as 4F1A2B", "", rng)
    if reason == "expired" and rng.random() < 0.5:
        reply, status, phase = rng.choice(CODES["networkerror"])
        return _expiry(rcpt, rng.choice(DIAGNOSTICS["networkerror"]), phase, status, rng)
    reply, status, phase = rng.choice(CODES[reason])
    text = rng.choice(DIAGNOSTICS[reason])
    if rng.random() < 0.4:
        text = reword(text, rng)
    if rng.random() < 0.3:
        text = f"<{rcpt}>: {text}"
    code = " ".join(x for x in (reply, status) if x and rng.random() < 0.85)
    return envelope(rcpt, f"{code} {text}".strip(), phase, status, rng)


def _headers(subject: str, rng: random.Random, extra: str = "") -> str:
    return (f"From: {rng.choice(['MAILER-DAEMON', 'Mail Delivery System', 'postmaster'])}"
            f" <MAILER-DAEMON@mx.{rng.choice(HOSTS)}>\nTo: sender@example.jp\n"
            f"Subject: {subject}\nDate: Mon, 1 Jun 2026 10:00:00 +0000\n{extra}")


LOCALISED_INTROS = [
    "Votre message n'a pas pu être remis aux destinataires suivants :",
    "Ihre Nachricht konnte nicht an folgende Empfänger zugestellt werden:",
    "No se pudo entregar su mensaje a los siguientes destinatarios:",
    "Não foi possível entregar a sua mensagem aos seguintes destinatários:",
    "Ваше сообщение не может быть доставлено следующим получателям:",
    "以下の宛先にメールを配信できませんでした。", "您的邮件无法投递到以下收件人："]
PROVIDER_INTROS = [
    "We're sorry, but your message could not be delivered.",
    "An error occurred while trying to deliver the mail to the following recipients:",
    "Your message wasn't delivered because the recipient's server returned an error.",
    "The following message to <{rcpt}> was undeliverable.",
    "This is an automatically generated message. Your email could not be delivered."]
ORIGINAL = ("Return-Path: <sender@example.jp>\nReceived: from client.example.jp by mx.example.jp\n"
            "From: sender@example.jp\nTo: {rcpt}\nSubject: hello\n"
            "Message-ID: <1@example.jp>\n\nhi\n")
COMMAND = {"rcpt": "RCPT TO", "mail": "MAIL FROM", "data": "end of DATA", "helo": "EHLO",
           "auth": "AUTH", "starttls": "STARTTLS"}


def _notice(rcpt, subject, body, rng, extra=""):
    """A bounce that is not a DSN: headers, the notice, then the original message inline."""
    return _headers(subject, rng, extra) + "\n" + body + ORIGINAL.format(rcpt=rcpt)


def _dsn(rcpt, action, status, diagnostic, human, rng, subject="Delivery Status Notification"):
    boundary = f"b{rng.randrange(10**8)}"
    diag = f"Diagnostic-Code: smtp; {diagnostic}\n" if diagnostic else ""
    return (_headers(subject, rng, f'MIME-Version: 1.0\nContent-Type: multipart/report; '
                     f'report-type=delivery-status; boundary="{boundary}"\n') +
            f"\n--{boundary}\nContent-Type: text/plain; charset=utf-8\n\n{human}\n"
            f"--{boundary}\nContent-Type: message/delivery-status\n\n"
            f"Reporting-MTA: dns; mx.example.jp\n\nFinal-Recipient: rfc822; {rcpt}\n"
            f"Action: {action}\nStatus: {status or ('4.0.0' if action == 'delayed' else '5.0.0')}\n"
            f"Remote-MTA: dns; mx.{rcpt.split('@')[1]}\n{diag}\n"
            f"--{boundary}\nContent-Type: message/rfc822\n\n{ORIGINAL.format(rcpt=rcpt)}\n"
            f"--{boundary}--\n")


def _postfix(rcpt, diagnostic, phase, status, rng):
    said = f"host mx.{rcpt.split('@')[1]}[192.0.2.{rng.randrange(1, 250)}] said: {diagnostic}"
    if phase in COMMAND:
        said += f" (in reply to {COMMAND[phase]} command)"
    human = ("This is the mail system at host mx.example.jp.\n\nI'm sorry to have to inform you "
             "that your message could not\nbe delivered to one or more recipients. It's attached "
             "below.\n\n                   The mail system\n\n"
             f"<{rcpt}>: {said}\n")
    return _dsn(rcpt, "failed", status, diagnostic, human, rng,
                "Undelivered Mail Returned to Sender")


def _exim(rcpt, diagnostic, phase, status, rng):
    after = f" after {COMMAND[phase]}" if phase in COMMAND else ""
    body = ("This message was created automatically by mail delivery software.\n\n"
            "A message that you sent could not be delivered to one or more of its\n"
            "recipients. This is a permanent error. The following address(es) failed:\n\n"
            f"  {rcpt}\n    host mx.{rcpt.split('@')[1]} [192.0.2.7]\n"
            f"    SMTP error from remote mail server{after}:\n    {diagnostic}\n\n"
            "------ This is a copy of the message, including all the headers. ------\n\n")
    return _notice(rcpt, "Mail delivery failed: returning message to sender", body, rng,
                   "X-Failed-Recipients: " + rcpt + "\n")


def _opensmtpd(rcpt, diagnostic, phase, status, rng):
    body = ("Hi!\n\nThis is the MAILER-DAEMON, please DO NOT REPLY to this email.\n\n"
            "An error has occurred while attempting to deliver a message for\n"
            f"the following list of recipients:\n\n{rcpt}: {diagnostic}\n\n"
            "Below is a copy of the original message:\n\n")
    return _notice(rcpt, "Delivery status notification: error", body, rng)


def _exchange(rcpt, diagnostic, phase, status, rng):
    human = ("Delivery has failed to these recipients or groups:\n\n"
             f"{rcpt}\nThe message couldn't be delivered. {diagnostic.split(' ', 2)[-1]}\n\n"
             "Diagnostic information for administrators:\n\nGenerating server: EX01.example.jp\n\n"
             f"{rcpt}\nRemote Server returned '{diagnostic}'\n")
    return _dsn(rcpt, "failed", status, "", human, rng, "Undeliverable: hello")


def _yahoo(rcpt, diagnostic, phase, status, rng):
    tag = {"rcpt": " [RCPT_TO]", "data": " [BODY]", "mail": " [MAIL_FROM]"}.get(phase, "")
    body = ("Sorry, we were unable to deliver your message to the following address.\n\n"
            f"<{rcpt}>:\nRemote host said: {diagnostic}{tag}\n\n"
            "--- Below this line is a copy of the message.\n\n")
    return _notice(rcpt, "Failure Notice", body, rng)


def _haraka(rcpt, diagnostic, phase, status, rng):
    return _dsn(rcpt, "failed", status, diagnostic,
                f"Your message could not be delivered.\n\nRecipient: {rcpt}\nError: {diagnostic}\n",
                rng, "Returned mail: see transcript for details")


def _bare_dsn(rcpt, diagnostic, phase, status, rng):
    action = "delayed" if status.startswith("4") and rng.random() < 0.5 else "failed"
    return _dsn(rcpt, action, status, diagnostic, "", rng)


def _localised(rcpt, diagnostic, phase, status, rng):
    intro = rng.choice(LOCALISED_INTROS)
    body = f"{intro}\n\n{rcpt}\n{diagnostic}\n\n"
    return _notice(rcpt, "Undeliverable", body, rng, "Content-Type: text/plain; charset=utf-8\n")


def _autoreply(rcpt, rng):
    mark = rng.choice(["Auto-Submitted: auto-replied\n", "X-Autoreply: yes\n",
                       "Precedence: auto_reply\n", "Auto-Submitted: auto-replied (vacation)\n"])
    subject = rng.choice(["Out of Office", "Auto: hello", "Automatic reply: hello", "Absence",
                          "Abwesenheitsnotiz", "Re: hello"])
    return (f"From: {rcpt}\nTo: sender@example.jp\nSubject: {subject}\n{mark}"
            "Content-Type: text/plain; charset=utf-8\n\n" + rng.choice(VACATION) + "\n")


def _arf(rcpt, rng):
    boundary = f"f{rng.randrange(10**8)}"
    kind = rng.choice(["abuse", "fraud", "virus", "other", "not-spam", "auth-failure"])
    return (f"From: fbl@{rng.choice(HOSTS)}\nTo: sender@example.jp\nSubject: Abuse report\n"
            f'MIME-Version: 1.0\nContent-Type: multipart/report; report-type=feedback-report; '
            f'boundary="{boundary}"\n\n--{boundary}\nContent-Type: text/plain\n\n'
            "This is an email abuse report for a message received from your network.\n"
            f"--{boundary}\nContent-Type: message/feedback-report\n\nFeedback-Type: {kind}\n"
            f"User-Agent: fbl/1.0\nVersion: 1\nSource-IP: 192.0.2.3\n\n--{boundary}\n"
            f"Content-Type: message/rfc822\n\n{ORIGINAL.format(rcpt=rcpt)}\n--{boundary}--\n")


def _mdaemon(rcpt, diagnostic, phase, status, rng):
    body = ("The attached message had PERMANENT fatal delivery errors!\n\n"
            "After one or more unsuccessful delivery attempts the attached message has been\n"
            "removed from the mail queue on this server.\n\n"
            f"--- Session Transcript ---\n Sending message to {rcpt}\n"
            f" >> {COMMAND.get(phase, 'DATA')}\n << {diagnostic}\n--- End Transcript ---\n\n")
    return _notice(rcpt, "Permanent Delivery Failure", body, rng)


def _provider(rcpt, diagnostic, phase, status, rng):
    intro = rng.choice(PROVIDER_INTROS)
    body = (intro.format(rcpt=rcpt) + f"\n\nRecipient: {rcpt}\nReason: {diagnostic}\n\n"
            "Original message headers:\n\n")
    subject = rng.choice(["Undelivered Mail", "Message delivery failure", "Failure Notice",
                          "Delivery Status Notification (Failure)"])
    return _notice(rcpt, subject, body, rng)


def _expiry(rcpt, diagnostic, phase, status, rng):
    """A queue lifetime ran out: the last temporary error is told with a give-up notice."""
    notice = rng.choice([
        "Message could not be delivered for 5 days. Giving up.",
        "This message has been in the queue too long and was returned.",
        "retry time not reached for any host after a long failure period",
        "Delivery attempts will no longer be made; the message expired.",
        "I'm not going to try again; the maximum queue time was reached."])
    return _dsn(rcpt, "failed", "4.4.7", f"{diagnostic}", f"{notice}\n\n<{rcpt}>: {diagnostic}\n",
                rng, "Undelivered Mail Returned to Sender")


ENVELOPES = (_postfix, _exim, _opensmtpd, _exchange, _yahoo, _haraka, _bare_dsn, _localised,
             _mdaemon, _provider)
