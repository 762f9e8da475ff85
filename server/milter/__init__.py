"""``vsl milter``: the policy's stages inside Postfix or Sendmail, over the milter protocol.

    server.py      MilterServer: the policy, its script threads, the listeners (inet:, unix:)
    connection.py  one MTA connection: milter packets in, responses out; bad input closes it
    session.py     MilterSession: the Context and StageRunner of one SMTP session the MTA
                   describes, and the verdict of each command
    edits.py       what on_pre_queue changed (header fields, recipients, sender) as milter
                   modification actions
    verdicts.py    a stage's Status as a milter response (continue, accept, reply code)

The milter protocol's packets are encoded and decoded by purepythonmilter (pure Python,
asyncio); its own server and session are not used: they close a connection idle for 30
seconds, send one message's header changes again with the next message of a connection,
and let a malformed packet's exception escape (docs/milter.md, "The library").
"""
