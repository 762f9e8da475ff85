"""``vsl policyd``: the policy's stages answering Postfix's SMTPD policy delegation requests
(``check_policy_service`` in any ``smtpd_*_restrictions``).

    wire.py          the protocol: ``name=value`` lines ended by an empty line, its limits
    actions.py       a stage's status as an access(5) action (DUNNO, OK, 550 ..., HOLD, PREPEND)
    conversation.py  one SMTP session as Postfix reports it, and the bounded table of them
    delegation.py    one request: its conversation, its ctx, the stages it runs, its action
    service.py       the listener, its connections, the policy and its reloads
"""
