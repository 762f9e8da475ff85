"""How each MTA family wraps one diagnostic into a bounce message.

An envelope is ``envelope(rcpt, diagnostic, phase, status, rng) -> raw message``. The
layouts follow what these systems send (from their public source and documentation, or
from RFC 3464 / RFC 5965 / RFC 3834): their introductions and markers, where the
recipient and the remote reply stand, whether a ``message/delivery-status`` part comes
with it, and how the returned original is introduced. Autoreplies, feedback reports and
list refusals have their own writers at the end, since they carry no SMTP diagnostic.
"""
from __future__ import annotations

import json
import random

LOCAL = ["kijitora", "neko", "alice", "bob", "sales", "info", "m.tanaka", "contact", "j.smith"]
HOSTS = ["example.com", "example.net", "example.org", "mail.example.jp", "example.fr",
         "example.de", "example.it", "example.co.uk"]
ORIGINAL = ("Return-Path: <sender@example.jp>\nReceived: from client.example.jp by mx.example.jp\n"
            "From: sender@example.jp\nTo: {rcpt}\nSubject: hello\n"
            "Message-ID: <1@example.jp>\n\nhi\n")
COMMAND = {"rcpt": "RCPT TO", "mail": "MAIL FROM", "data": "end of DATA", "helo": "EHLO",
           "auth": "AUTH", "starttls": "STARTTLS"}
DATE = "Mon, 1 Jun 2026 10:00:00 +0000"
# qmail-send's permanent-failure apology (qmail-send.c), which Apache James reuses.
GIVEN_UP = ("I'm afraid I wasn't able to deliver your message to the following addresses.\n"
            "This is a permanent error; I've given up. Sorry it didn't work out.")


def _domain(rcpt: str) -> str:
    return rcpt.split("@")[1]


def _ip(rng: random.Random) -> str:
    return f"192.0.2.{rng.randrange(1, 250)}"


def _headers(subject: str, rng: random.Random, extra: str = "", sender: str = "") -> str:
    sender = sender or (f"{rng.choice(['MAILER-DAEMON', 'Mail Delivery System', 'postmaster'])}"
                        f" <MAILER-DAEMON@mx.{rng.choice(HOSTS)}>")
    return (f"From: {sender}\nTo: sender@example.jp\nSubject: {subject}\nDate: {DATE}\n{extra}")


def _notice(rcpt, subject, body, rng, extra="", sender=""):
    """A bounce that is not a DSN: headers, the notice, then the original message inline."""
    return _headers(subject, rng, extra, sender) + "\n" + body + ORIGINAL.format(rcpt=rcpt)


def _dsn(rcpt, action, status, diagnostic, human, rng, subject="Delivery Status Notification",
         sender="", diagnostic_type="smtp"):
    """An RFC 3464 report: the human part, one per-recipient block, the original."""
    boundary = f"b{rng.randrange(10**8)}"
    diag = f"Diagnostic-Code: {diagnostic_type}; {diagnostic}\n" if diagnostic else ""
    return (_headers(subject, rng, f'MIME-Version: 1.0\nContent-Type: multipart/report; '
                     f'report-type=delivery-status; boundary="{boundary}"\n', sender) +
            f"\n--{boundary}\nContent-Type: text/plain; charset=utf-8\n\n{human}\n"
            f"--{boundary}\nContent-Type: message/delivery-status\n\n"
            f"Reporting-MTA: dns; mx.example.jp\n{_message_fields(rng)}\n"
            f"{_recipient_fields(rcpt, rng)}Final-Recipient: rfc822; {rcpt}\n"
            f"Action: {action}\nStatus: {status or ('4.0.0' if action == 'delayed' else '5.0.0')}\n"
            f"Remote-MTA: dns; mx.{_domain(rcpt)}\n{diag}\n" + _returned(rcpt, boundary, rng))


def _message_fields(rng):
    """Optional per-message DSN fields (RFC 3464 §2.2)."""
    fields = ["X-Postfix-Queue-ID: 4F1A2B3C4D", f"Arrival-Date: {DATE}",
              "Received-From-MTA: dns; client.example.jp", "X-Original-Message-ID: <1@example.jp>"]
    return "".join(field + "\n" for field in rng.sample(fields, rng.randrange(0, 3)))


def _recipient_fields(rcpt, rng):
    return f"Original-Recipient: rfc822; {rcpt}\n" if rng.random() < 0.3 else ""


def _returned(rcpt, boundary, rng):
    """The returned original: whole, its header only, or left out."""
    roll = rng.random()
    if roll < 0.2:
        return f"--{boundary}--\n"
    if roll < 0.45:
        head = ORIGINAL.format(rcpt=rcpt).split("\n\n")[0]
        return (f"--{boundary}\nContent-Type: text/rfc822-headers\n\n{head}\n\n"
                f"--{boundary}--\n")
    return (f"--{boundary}\nContent-Type: message/rfc822\n\n{ORIGINAL.format(rcpt=rcpt)}\n"
            f"--{boundary}--\n")


def postfix(rcpt, diagnostic, phase, status, rng):
    """Postfix's bounce: the remote reply and the command it answered, or (no SMTP phase)
    its own finding, told in an ``X-Postfix`` Diagnostic-Code."""
    if not phase:
        return _dsn(rcpt, "failed", status, diagnostic, _postfix_human(rcpt, diagnostic), rng,
                    "Undelivered Mail Returned to Sender", diagnostic_type="X-Postfix")
    said = f"host mx.{_domain(rcpt)}[{_ip(rng)}] said: {diagnostic}"
    if phase in COMMAND:
        said += f" (in reply to {COMMAND[phase]} command)"
    return _dsn(rcpt, "failed", status, diagnostic, _postfix_human(rcpt, said), rng,
                "Undelivered Mail Returned to Sender")


def _postfix_human(rcpt, said):
    return ("This is the mail system at host mx.example.jp.\n\nI'm sorry to have to inform you "
            "that your message could not\nbe delivered to one or more recipients. It's attached "
            "below.\n\n                   The mail system\n\n"
            f"<{rcpt}>: {said}\n")


def exim(rcpt, diagnostic, phase, status, rng):
    """Exim's bounce: the remote reply and the command it answered, or (no SMTP phase) its
    own finding under the address."""
    after = f" after {COMMAND[phase]}" if phase in COMMAND else ""
    said = (f"    host mx.{_domain(rcpt)} [{_ip(rng)}]\n"
            f"    SMTP error from remote mail server{after}:\n" if phase else "")
    body = ("This message was created automatically by mail delivery software.\n\n"
            "A message that you sent could not be delivered to one or more of its\n"
            "recipients. This is a permanent error. The following address(es) failed:\n\n"
            f"  {rcpt}\n{said}    {diagnostic}\n\n"
            "------ This is a copy of the message, including all the headers. ------\n\n")
    return _notice(rcpt, "Mail delivery failed: returning message to sender", body, rng,
                   "X-Failed-Recipients: " + rcpt + "\n")


def _transcript(rcpt, diagnostic, phase, rng):
    """Sendmail's "Transcript of session follows": the command sent and the reply; with
    PIPELINING a refused RCPT is told after the DATA sent with it."""
    command = {"rcpt": f"RCPT To:<{rcpt}>", "mail": "MAIL From:<sender@example.jp>",
               "data": "DATA", "helo": "EHLO mx.example.jp"}.get(phase, "DATA")
    if phase == "rcpt" and rng.random() < 0.5:
        command += "\n>>> DATA"
    return ("   ----- Transcript of session follows -----\n"
            f"... while talking to mx.{_domain(rcpt)}.:\n>>> {command}\n<<< {diagnostic}\n")


def sendmail(rcpt, diagnostic, phase, status, rng):
    """Sendmail's DSN: the failed addresses, then the SMTP transcript of the session."""
    human = ("The original message was received at Mon, 1 Jun 2026 09:58:00 +0900\n"
             "from localhost [127.0.0.1]\n\n"
             "   ----- The following addresses had permanent fatal errors -----\n"
             f"<{rcpt}>\n    (reason: {diagnostic})\n\n" +
             _transcript(rcpt, diagnostic, phase, rng))
    subject = rng.choice(["Returned mail: see transcript for details",
                          "Postmaster notify: see transcript for details"])
    return _dsn(rcpt, "failed", status, diagnostic, human, rng, subject)


def local_mailer(rcpt, exit_code, rng):
    """Sendmail's DSN when the local delivery program failed: an X-Unix exit status."""
    program = rng.choice(["/usr/bin/procmail", "/usr/lib/dovecot/deliver",
                          "|/usr/local/bin/filter"])
    human = ("   ----- The following addresses had permanent fatal errors -----\n"
             f"{program}\n    (reason: {exit_code})\n    (expanded from: <{rcpt}>)\n\n"
             f"   ----- Transcript of session follows -----\n{program}: exited with {exit_code}\n"
             f"{rng.choice(['554 5.3.0 unknown mailer error', '451 4.3.0 mailer failed'])} "
             f"{exit_code}\n")
    return _dsn(rcpt, "failed", rng.choice(["5.0.0", "4.5.0", "5.3.0"]), str(exit_code), human,
                rng, "Returned mail: see transcript for details", diagnostic_type="X-Unix")


def old_sendmail(rcpt, diagnostic, phase, status, rng):
    """An old sendmail bounce without DSN: transcript, then the unsent message."""
    body = (_transcript(rcpt, diagnostic, phase, rng) +
            f"{rcpt}... {diagnostic.split(' ', 1)[-1]}\n\n   ----- Unsent message follows -----\n")
    return _notice(rcpt, "Returned mail: " + rng.choice(["User unknown", "Service unavailable",
                                                          "Cannot send message"]), body, rng)


def qmail(rcpt, diagnostic, phase, status, rng):
    ip = _ip(rng)
    said = {"rcpt": f"{ip} does not like recipient.\nRemote host said: {diagnostic}\n"
                    f"Giving up on {ip}.",
            "mail": f"Connected to {ip} but sender was rejected.\nRemote host said: {diagnostic}",
            "data": f"{ip} failed after I sent the message.\nRemote host said: {diagnostic}",
            "connect": f"Connected to {ip} but greeting failed.\nRemote host said: {diagnostic}",
            "helo": f"Connected to {ip} but my name was rejected.\n"
                    f"Remote host said: {diagnostic}",
            }.get(phase, diagnostic)
    body = (f"Hi. This is the qmail-send program at mx.example.jp.\n{GIVEN_UP}\n\n"
            f"<{rcpt}>:\n{said}\n\n--- Below this line is a copy of the message.\n\n")
    return _notice(rcpt, "failure notice", body, rng)


def courier(rcpt, diagnostic, phase, status, rng):
    human = ("This is a delivery status notification from mx.example.jp,\n"
             "running the Courier mail server.\n\n"
             "The original message was received on Mon, 1 Jun 2026 09:58:00 +0900\n\n"
             "                        UNDELIVERABLE MAIL\n\n"
             "Your message to the following recipients cannot be delivered:\n\n"
             f"<{rcpt}>:\n    mx.{_domain(rcpt)} [{_ip(rng)}]:\n"
             f">>> {COMMAND.get(phase, 'DATA')}\n<<< {diagnostic}\n")
    return _dsn(rcpt, "failed", status, diagnostic, human, rng, "NOTICE: mail delivery status.")


def james(rcpt, diagnostic, phase, status, rng):
    body = (f"Hi. This is the James mail server at mx.example.jp.\n{GIVEN_UP} Below\n"
            "I include the list of recipients and the reason why I was unable to deliver\n"
            f"your message.\n\nFailed recipient(s):\n{rcpt}\n\nError message:\n{diagnostic}\n\n")
    return _notice(rcpt, "Re: hello", body, rng)


def domino(rcpt, diagnostic, phase, status, rng):
    """Lotus Notes / Domino: "Your message ... was not delivered to ... because: ..."."""
    body = ("Your message\n\n  Subject: hello\n\n"
            f"was not delivered to:\n\n  {rcpt}\n\nbecause:\n\n  {diagnostic}\n\n")
    reason = diagnostic.split(" ", 2)[-1][:40]
    subject = rng.choice([f"DELIVERY FAILURE: {reason}", "DELIVERY REPORT", "Delivery Failure"])
    return _notice(rcpt, subject, body, rng, sender="Mail Router <postmaster@notes.example.jp>")


def exchange2003(rcpt, diagnostic, phase, status, rng):
    """Exchange 2000/2003: the recipient list with the server and code in angle brackets."""
    human = ("Your message did not reach some or all of the intended recipients.\n\n"
             f"      Subject:\thello\n      Sent:\t{DATE}\n\n"
             "The following recipient(s) cannot be reached:\n\n"
             f"      {rcpt} on {DATE}\n            {diagnostic}\n"
             f"            <mx.example.jp #{status or '5.0.0'}>\n")
    subject = "Undeliverable: hello"
    if rng.random() < 0.5:
        return _notice(rcpt, subject, human + "\n", rng)
    return _dsn(rcpt, "failed", status, "", human, rng, subject)


def exchange(rcpt, diagnostic, phase, status, rng):
    """Exchange 2010+ / Office 365 NDR: the readable part names the remote reply."""
    human = ("Delivery has failed to these recipients or groups:\n\n"
             f"{rcpt}\nThe message couldn't be delivered. {diagnostic.split(' ', 2)[-1]}\n\n"
             "Diagnostic information for administrators:\n\nGenerating server: EX01.example.jp\n\n"
             f"{rcpt}\nRemote Server returned '{diagnostic}'\n")
    return _dsn(rcpt, "failed", status, "", human, rng, "Undeliverable: hello")


def gmail(rcpt, diagnostic, phase, status, rng):
    intro = rng.choice([
        f"Delivery to the following recipient failed permanently:\n\n     {rcpt}\n\n"
        "Technical details of permanent failure:\n",
        f"** Message not delivered **\n\nYour message couldn't be delivered to {rcpt}.\n\n"
        "The response from the remote server was:\n"])
    return _dsn(rcpt, "failed", status, diagnostic, intro + diagnostic + "\n", rng,
                "Delivery Status Notification (Failure)",
                "Mail Delivery Subsystem <mailer-daemon@googlemail.com>")


def yahoo(rcpt, diagnostic, phase, status, rng):
    tag = {"rcpt": " [RCPT_TO]", "data": " [BODY]", "mail": " [MAIL_FROM]"}.get(phase, "")
    body = ("Sorry, we were unable to deliver your message to the following address.\n\n"
            f"<{rcpt}>:\nRemote host said: {diagnostic}{tag}\n\n"
            "--- Below this line is a copy of the message.\n\n")
    return _notice(rcpt, "Failure Notice", body, rng)


def opensmtpd(rcpt, diagnostic, phase, status, rng):
    body = ("Hi!\n\nThis is the MAILER-DAEMON, please DO NOT REPLY to this email.\n\n"
            "An error has occurred while attempting to deliver a message for\n"
            f"the following list of recipients:\n\n{rcpt}: {diagnostic}\n\n"
            "Below is a copy of the original message:\n\n")
    return _notice(rcpt, "Delivery status notification: error", body, rng)


def haraka(rcpt, diagnostic, phase, status, rng):
    return _dsn(rcpt, "failed", status, diagnostic,
                f"Your message could not be delivered.\n\nRecipient: {rcpt}\nError: {diagnostic}\n",
                rng, "Returned mail: see transcript for details")


def mdaemon(rcpt, diagnostic, phase, status, rng):
    body = ("The attached message had PERMANENT fatal delivery errors!\n\n"
            "After one or more unsuccessful delivery attempts the attached message has been\n"
            "removed from the mail queue on this server.\n\n"
            f"--- Session Transcript ---\n Sending message to {rcpt}\n"
            f" >> {COMMAND.get(phase, 'DATA')}\n << {diagnostic}\n--- End Transcript ---\n\n")
    return _notice(rcpt, "Permanent Delivery Failure", body, rng)


def imail(rcpt, diagnostic, phase, status, rng):
    """IMail: the remote response quoted, or the reason written before the address."""
    if rng.random() < 0.5:
        body = f"{diagnostic.split(' ', 1)[-1]}: {rcpt}\n\nOriginal message follows.\n\n"
    else:
        body = (f"Unable to deliver message to {rcpt}\n\nBody of message generated response:"
                f"\n\n{diagnostic}\n\n----- Original message follows -----\n")
    return _notice(rcpt, "Undeliverable Mail", body, rng)


def messaging_server(rcpt, diagnostic, phase, status, rng):
    """Sun / Oracle Communications Messaging Server: a field-like report per recipient."""
    human = ("This report relates to a message you sent with the following header fields:\n\n"
             "  Message-id: <1@example.jp>\n  Date: " + DATE + "\n  From: sender@example.jp\n"
             f"  To: {rcpt}\n  Subject: hello\n\nYour message cannot be delivered to the "
             f"following recipients:\n\n  Recipient address: {rcpt}\n"
             "  Reason: Remote SMTP server has rejected address\n"
             f"  Diagnostic code: smtp;{diagnostic}\n  Remote system: dns;mx.{_domain(rcpt)}\n")
    return _dsn(rcpt, "failed", status, diagnostic, human, rng, "Delivery Notification: "
                "Delivery has failed")


def scanner_transcript(rcpt, diagnostic, phase, status, rng):
    """A mail-security appliance that quotes the SMTP exchange it had with the next hop."""
    sent = {"rcpt": f"RCPT TO:<{rcpt}>", "mail": "MAIL FROM:<sender@example.jp>"}.get(
        phase, "DATA")
    body = (f"Mail could not be delivered to <{rcpt}>.\n\nTranscript of the session:\n"
            f"Sent <<< {sent}\nReceived >>> {diagnostic}\n\n"
            "Unable to deliver message to the recipient above.\n\n")
    return _notice(rcpt, rng.choice(["Mail could not be delivered", "Delivery failure"]), body,
                   rng)


def policy_gateway(rcpt, diagnostic, phase, status, rng):
    """A gateway quoting the message's header fields before the reason (MailMarshal-like)."""
    body = ("Your message:\n\n   From:    sender@example.jp\n   Subject: hello\n\n"
            f"Could not be delivered because of\n\n{diagnostic}\n\n"
            f"The following recipients were affected:\n\n   {rcpt}\n\n")
    return _notice(rcpt, rng.choice(["Undeliverable Mail", "Message Undeliverable"]), body, rng)


RUSSIAN_INTROS = ["Это сообщение создано автоматически почтовым сервером.",
                  "К сожалению, ваше письмо не было доставлено.",
                  "Письмо не удалось доставить получателю."]


def russian_provider(rcpt, diagnostic, phase, status, rng):
    """A Russian webmail provider's notice (Mail.ru / Yandex-like), reply quoted."""
    body = (f"{rng.choice(RUSSIAN_INTROS)}\n\nПолучатель: {rcpt}\n"
            f"Ответ сервера получателя: {diagnostic}\n\nИсходное письмо:\n\n")
    return _notice(rcpt, rng.choice(["Недоставленное сообщение", "Письмо не доставлено",
                                     "Mail delivery failed"]), body, rng,
                   "Content-Type: text/plain; charset=utf-8\n")


JAPANESE_INTROS = ["送信されたメールは、以下の理由により相手に届きませんでした。",
                   "このメールは送信サーバから自動的に送られています。宛先への配送に失敗しました。",
                   "お客様が送信されたメールは、宛先に配信できませんでした。"]


def japanese_carrier(rcpt, diagnostic, phase, status, rng):
    """A Japanese mobile carrier or ISP notice: Japanese introduction, then the reply."""
    body = (f"{rng.choice(JAPANESE_INTROS)}\n\n宛先: {rcpt}\n理由: {diagnostic}\n\n"
            "------ 元のメッセージ ------\n")
    return _notice(rcpt, rng.choice(["Mail System Error - Returned Mail",
                                     "配送エラー", "Returned mail: Undeliverable"]), body, rng,
                   "Content-Type: text/plain; charset=utf-8\n")


GATEWAY_BANNERS = [
    "The message was not delivered due to the following reason(s):",
    "Your message could not be delivered by the mail security gateway.",
    "The email below could not be delivered to one or more recipients.",
    "This is a notification from the email protection service.",
    "--- The following addresses had delivery problems ---",
    "Message delivery to the recipient below was refused by the remote filter.",
]


GATEWAY_SUBJECTS = ["Mail Delivery Failure", "Message delivery has failed", "Delivery Status",
                    "Undeliverable message", "FAILURE NOTICE"]


def gateway(rcpt, diagnostic, phase, status, rng):
    """A filtering gateway or appliance (virus / spam scanner in front of a mail server)."""
    return _reason_notice(rcpt, diagnostic, status, rng.choice(GATEWAY_BANNERS),
                          "Included is a copy of the message header:\n-------------------------\n",
                          GATEWAY_SUBJECTS, 0.4, rng)


def _reason_notice(rcpt, diagnostic, status, intro, footer, subjects, dsn_share, rng):
    """A notice naming the recipient and the reason on lines of their own; a DSN part
    follows in ``dsn_share`` of them."""
    lines = rng.choice([f"<{rcpt}>\n  Reason: {diagnostic}",
                        f"Recipient: {rcpt}\nReason: {diagnostic}"])
    body = f"{intro}\n\n{lines}\n\n{footer}"
    if rng.random() < dsn_share:
        return _dsn(rcpt, "failed", status, diagnostic, body, rng, rng.choice(subjects))
    return _notice(rcpt, rng.choice(subjects), body, rng)


def sending_service(rcpt, diagnostic, phase, status, rng):
    """A bulk-sending service's bounce notification (SES, SendGrid, Mailgun-like)."""
    intro = rng.choice([
        "An error occurred while trying to deliver the mail to the following recipients:",
        "Your message could not be delivered to the recipient below.",
        "We were unable to deliver your email. The receiving server said:",
        "The following recipient bounced:"])
    return _dsn(rcpt, "failed", status, diagnostic, f"{intro}\n{rcpt}\n{diagnostic}\n", rng,
                rng.choice(["Delivery Status Notification (Failure)", "Undeliverable message",
                            "Message bounced"]))


def groupwise(rcpt, diagnostic, phase, status, rng):
    """Novell / Micro Focus GroupWise: the undeliverable address with the reason in
    parentheses, then a list of possible causes."""
    body = ("The message that you sent was undeliverable to the following:\n"
            f"\t{rcpt} ({diagnostic})\n\nPossible causes:\n"
            "  The e-mail address may be incorrect, or the remote server refused the message.\n\n"
            "Original message follows.\n\n")
    return _notice(rcpt, "Message status - undeliverable", body, rng)


def webmail(rcpt, diagnostic, phase, status, rng):
    """A hosted-mail provider's notice (Zoho, Yandex, Mail.ru in English): the recipient,
    then the receiving server's reply, quoted as it came."""
    intro = rng.choice(["Delivery to these recipients failed permanently:",
                        "Message delivery failed to the following address:",
                        "Your message was not delivered to the recipients below.",
                        "These recipients could not be reached:"])
    body = (f"{intro}\n\n  {rcpt}\n\nReason: Remote server replied: {diagnostic}\n\n"
            "Original message headers:\n\n")
    return _notice(rcpt, rng.choice(["Undelivered Mail Returned to Sender", "Delivery failed",
                                     "Undeliverable message"]), body, rng)


def ses_notification(rcpt, diagnostic, phase, status, rng):
    """An Amazon SES bounce notification delivered by SNS as email: its JSON document
    (the fields AWS documents) as the body."""
    permanent = not status.startswith("4")
    recipient = {"emailAddress": rcpt, "action": "failed", "status": status or "5.0.0",
                 "diagnosticCode": f"smtp; {diagnostic}"}
    bounce = {"bounceType": "Permanent" if permanent else "Transient",
              "bounceSubType": "General",
              "bouncedRecipients": [recipient], "timestamp": "2026-06-01T10:00:00.000Z",
              "feedbackId": f"0100{rng.randrange(10**12)}-000000", "remoteMtaIp": _ip(rng),
              "reportingMTA": "dsn; a1-2.smtp-out.us-west-2.amazonses.com"}
    document = {"notificationType": "Bounce", "bounce": bounce,
                "mail": {"source": "sender@example.jp", "destination": [rcpt],
                         "messageId": f"0100{rng.randrange(10**12)}-000000"}}
    return _headers("AWS Notification Message", rng, "Content-Type: text/plain; charset=UTF-8\n",
                    "AWS Notifications <no-reply@sns.amazonaws.com>") + "\n" + json.dumps(document)


def bare_dsn(rcpt, diagnostic, phase, status, rng):
    action = "delayed" if status.startswith("4") and rng.random() < 0.5 else "failed"
    return _dsn(rcpt, action, status, diagnostic, "", rng)


LOCALISED_INTROS = [
    "Votre message n'a pas pu être remis aux destinataires suivants :",
    "Ihre Nachricht konnte nicht an folgende Empfänger zugestellt werden:",
    "No se pudo entregar su mensaje a los siguientes destinatarios:",
    "Não foi possível entregar a sua mensagem aos seguintes destinatários:",
    "Non è stato possibile recapitare il messaggio ai seguenti destinatari:",
    "Uw bericht kon niet worden afgeleverd bij de volgende ontvangers:",
    "Ваше сообщение не может быть доставлено следующим получателям:",
    "Nie można dostarczyć wiadomości do następujących odbiorców:",
    "以下の宛先にメールを配信できませんでした。", "次のアドレスへのメール送信に失敗しました。",
    "您的邮件无法投递到以下收件人：", "다음 수신자에게 메일을 전달하지 못했습니다:"]
LOCALISED_SUBJECTS = ["Undeliverable", "Non remis", "Unzustellbar", "No se puede entregar",
                      "Não entregue", "Mancato recapito", "Onbestelbaar", "Не доставлено",
                      "配信不能", "メール送信エラー", "退信", "전달 실패"]


def localised(rcpt, diagnostic, phase, status, rng):
    body = f"{rng.choice(LOCALISED_INTROS)}\n\n{rcpt}\n{diagnostic}\n\n"
    return _notice(rcpt, rng.choice(LOCALISED_SUBJECTS), body, rng,
                   "Content-Type: text/plain; charset=utf-8\n")


PROVIDER_INTROS = [
    "We're sorry, but your message could not be delivered.",
    "Your message wasn't delivered because the recipient's server returned an error.",
    "The following message to <{rcpt}> was undeliverable.",
    "This is an automatically generated message. Your email could not be delivered.",
    "Sorry, your message to {rcpt} cannot be delivered.",
    "Unfortunately, we could not deliver your message to one or more recipients."]


PROVIDER_SUBJECTS = ["Undelivered Mail", "Message delivery failure", "Failure Notice",
                     "Delivery Status Notification (Failure)", "Returned mail"]


def provider(rcpt, diagnostic, phase, status, rng):
    """A mailbox provider's own wording of a failed delivery."""
    intro = rng.choice(PROVIDER_INTROS).format(rcpt=rcpt)
    return _reason_notice(rcpt, diagnostic, status, intro, "Original message headers:\n\n",
                          PROVIDER_SUBJECTS, 0.0, rng)


GIVE_UP_NOTICES = [
    "Message could not be delivered for 5 days. Giving up.",
    "This message has been in the queue too long and was returned.",
    "retry time not reached for any host after a long failure period",
    "Delivery attempts will no longer be made; the message expired.",
    "I'm not going to try again; this message has been in the queue too long.",
    "The message could not be delivered within the configured time and was returned.",
    "Delivery to the following recipient has been abandoned after repeated failures.",
    "Gave up after 15 delivery attempts.",
    "All delivery attempts failed; the message was removed from the queue.",
    "Die Nachricht konnte innerhalb der Frist nicht zugestellt werden.",
    "Le message n'a pas pu être remis dans le délai imparti.",
    "配信期限内に配送できませんでした。",
]
# Delay warnings (the labeler counts a message still retried after long as expired).
DELAY_NOTICES = [
    "Your message to the recipient below is delayed; we will keep retrying for two more days.",
    "This is a warning message only. The mail system will keep trying to deliver it.",
    "Your message has not been delivered yet: it was delayed 24 hours and is still retried.",
    "Warning: could not send message for past 4 hours; will keep trying until it is 5 days old.",
    "The message is delayed; no action is required on your part.",
    "Zustellung verzögert: der Versand wird weiter versucht.",
    "Remise différée : nouvel essai plus tard.",
]
DELAY_SUBJECTS = [
    "Delayed Mail (still being retried)",
    "Warning: message delayed 24 hours",
    "Delivery Status Notification (Delay)",
    "Warning: could not send message for past 4 hours",
    "Delivery delayed",
]


def expiry(rcpt, diagnostic, phase, status, rng):
    """A queue lifetime ran out: the last temporary error is told with a give-up notice, or
    a delay warning tells it is still retried."""
    notice = rng.choice(GIVE_UP_NOTICES)
    roll = rng.random()
    if roll < 0.25:
        return _dsn(rcpt, "delayed", rng.choice(["4.4.7", "4.4.1", "4.0.0"]), diagnostic,
                    f"{rng.choice(DELAY_NOTICES)}\n\n<{rcpt}>: {diagnostic}\n", rng,
                    rng.choice(DELAY_SUBJECTS))
    if roll < 0.45:
        body = (f"Hi. This is the qmail-send program at mx.example.jp.\n<{rcpt}>:\n"
                f"{diagnostic}\n{notice}\n\n--- Below this line is a copy of the message.\n\n")
        return _notice(rcpt, "failure notice", body, rng)
    return _dsn(rcpt, "failed", rng.choice(["4.4.7", "5.4.7", ""]), diagnostic,
                f"{notice}\n\n<{rcpt}>: {diagnostic}\n", rng,
                "Undelivered Mail Returned to Sender")


ENVELOPES = (postfix, exim, sendmail, old_sendmail, qmail, courier, james, domino,
             exchange2003, exchange, gmail, yahoo, opensmtpd, haraka, mdaemon, imail, gateway,
             sending_service, messaging_server, scanner_transcript, policy_gateway,
             russian_provider, japanese_carrier, bare_dsn, localised, provider, groupwise,
             webmail, ses_notification)

AUTOREPLY_MARKS = ["Auto-Submitted: auto-replied\n", "X-Autoreply: yes\n", "",
                   "Precedence: auto_reply\n", "Auto-Submitted: auto-replied (vacation)\n",
                   "Auto-Submitted: auto-generated\nX-Auto-Response-Suppress: All\n",
                   "Precedence: bulk\n", "X-Autorespond: yes\n"]
AUTOREPLY_SUBJECTS = ["Out of Office", "Auto: hello", "Automatic reply: hello", "Absence",
                      "Abwesenheitsnotiz", "Re: hello", "Out of office: hello",
                      "Auto reply: hello",
                      "Away until Monday", "[Auto-Reply] hello", "Absence du bureau",
                      "Fuera de la oficina", "Risposta automatica: hello", "不在通知",
                      "自動応答: hello", "自动回复: hello", "On vacation"]


def autoreply(rcpt, body, rng):
    """An RFC 3834 reply from a person's mailbox, with or without the marks of one."""
    head = (f"From: {rcpt}\nTo: sender@example.jp\nSubject: {rng.choice(AUTOREPLY_SUBJECTS)}\n"
            f"Date: {DATE}\n{rng.choice(AUTOREPLY_MARKS)}")
    if rng.random() < 0.3:
        boundary = f"a{rng.randrange(10**8)}"
        return (head + f'MIME-Version: 1.0\nContent-Type: multipart/alternative; '
                f'boundary="{boundary}"\n\n--{boundary}\nContent-Type: text/plain; charset=utf-8'
                f"\n\n{body}\n--{boundary}\nContent-Type: text/html; charset=utf-8\n\n"
                f"<html><body><p>{body}</p></body></html>\n--{boundary}--\n")
    return head + f"Content-Type: text/plain; charset=utf-8\n\n{body}\n"


LIST_GREETINGS = ["Hello sender@example.jp,", "Hi,", "Dear sender,", "", "sender@example.jp 様",
                  "Bonjour,", "Hallo,", "Hola,", "Olá,", "Ciao,", "Здравствуйте,", "您好，"]
LIST_CLOSINGS = ["If you think this is a mistake, contact the group owner.",
                 "Questions about this list go to its owner.", "",
                 "This is an automated message; replies are not read.",
                 "For help, send a message with the word 'help' to the list's request address."]
# Who sends the refusal: the list's own address, its list manager, or the mail system.
LIST_SENDERS = ["{group}+owner@{host}", "{group}-owner@{host}", "{group}-bounces@{host}",
                "{group}-request@{host}", "mailman-owner@{host}", "sympa@{host}",
                "LISTSERV@{host}", "fml@{host}"] + [
    "Mail Delivery Subsystem <mailer-daemon@{host}>", "MAILER-DAEMON@{host}"] * 4


def list_refusal(rcpt, text, hints, rng):
    """A group or mailing-list server refusing a post: from the list's manager as an
    automatic reply, or from the provider's mail system naming the list as the failed
    recipient."""
    group, host = rng.choice(["announce", "users", "dev-team", "staff", "news"]), _domain(rcpt)
    sender = rng.choice(LIST_SENDERS).format(group=group, host=host)
    mark = rng.choice(["Auto-Submitted: auto-replied\n"] * 4 + ["Precedence: bulk\n", ""])
    if "daemon" in sender.lower():
        mark += f"X-Failed-Recipients: {group}@{host}\n"
    text = text.replace("group", f"group ({group})", 1)
    body = (f"{rng.choice(LIST_GREETINGS)}\n\n{text}\n" + "\n".join(hints) +
            f"\n\nGroup: {group}@{host}\n{rng.choice(LIST_CLOSINGS)}\n")
    if rng.random() < 0.5:
        body += "\n----- Original message -----\n\n" + ORIGINAL.format(rcpt=f"{group}@{host}")
    return _headers(rng.choice(["Delivery Status Notification (Failure)"] * 2 +
                               [f"Your message to {group} was rejected",
                                "Message not delivered", f"Rejected posting to {group}"]),
                    rng, mark, sender) + "\n" + body


FEEDBACK_INTROS = [
    "This is an email abuse report for a message received from your network.",
    "A recipient marked the attached message as spam.",
    "This is an authentication failure report for a message claiming to be from your domain.",
    "The following message was reported by one of our users as unwanted.",
    "Complaint received: see the attached report.",
    "This is an opt-out report for a message sent from your IP address."]


def feedback(rcpt, rng):
    """An RFC 5965 ARF report: the human part, the machine part, the reported message."""
    boundary = f"f{rng.randrange(10**8)}"
    kind = rng.choice(["abuse", "fraud", "virus", "other", "not-spam", "auth-failure",
                       "opt-out"])
    fields = [f"Feedback-Type: {kind}", f"User-Agent: {rng.choice(['fbl/1.0', 'ARF-Gen/2'])}",
              "Version: 1", f"Source-IP: {_ip(rng)}", "Original-Mail-From: <sender@example.jp>",
              f"Original-Rcpt-To: <{rcpt}>", f"Arrival-Date: {DATE}",
              "Reported-Domain: example.jp"]
    machine = "\n".join(fields[:3] + rng.sample(fields[3:], rng.randrange(1, 6)))
    original = ORIGINAL.format(rcpt=rcpt)
    if rng.random() < 0.3:
        original = original.split("\n\n")[0] + "\n"
    return (f"From: {rng.choice(['fbl', 'abuse', 'feedback-loop'])}@{rng.choice(HOSTS)}\n"
            f"To: abuse@example.jp\nDate: {DATE}\nSubject: "
            f"{rng.choice(['Abuse report', 'FW: hello', 'Feedback report', 'Spam complaint'])}\n"
            f'MIME-Version: 1.0\nContent-Type: multipart/report; report-type=feedback-report; '
            f'boundary="{boundary}"\n\n--{boundary}\nContent-Type: text/plain\n\n'
            f"{rng.choice(FEEDBACK_INTROS)}\n\n--{boundary}\n"
            f"Content-Type: message/feedback-report\n\n{machine}\n\n--{boundary}\n"
            f"Content-Type: message/rfc822\n\n{original}\n--{boundary}--\n")


def delivered(rcpt, rng):
    """A success DSN (delivered, relayed or expanded)."""
    action = rng.choice(["delivered", "relayed", "expanded"])
    return _dsn(rcpt, action, "2.0.0", "250 2.0.0 OK queued as 4F1A2B",
                "Your message was successfully delivered to the destination(s) listed below.\n",
                rng, "Successful Mail Delivery Report")
