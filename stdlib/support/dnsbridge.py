"""Synchronous libraries (pyspf, dkimpy) driven by the asynchronous ``dns::`` resolver.

    answers = Answers(fetch)       # fetch(key) -> the answer; a coroutine on the resolver
    outcome = await answers.run(evaluate, rounds=40, offload=True)

``evaluate()`` is synchronous and reads DNS only through ``answers.get(key)``: the answer
fetched so far, or the :class:`DnsTempError` met fetching it. A key not fetched yet is
noted and stops the evaluation (:class:`Missing`); ``run`` then fetches every noted key at
once and evaluates again from the start. Given the same answers an evaluation is the
same, so the first run that notes nothing is the outcome. The event loop never waits on
DNS; with ``offload`` the evaluation itself (hashing, RSA) runs in a worker thread.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Iterable

from ..dns import DnsTempError


class Missing(BaseException):
    """Stops an evaluation at a look-up that has no answer yet. Not an Exception, which
    the library might catch; one that catches everything is noticed all the same, as the
    key is noted first."""


class Answers:
    """The DNS answers of one check, filled by ``fetch`` as the evaluation asks for them."""

    def __init__(self, fetch: Callable[[Hashable], Awaitable[object]]):
        self._fetch = fetch
        self.table: dict = {}  # key -> answer, or the DnsTempError met fetching it
        self.missing: set = set()

    def get(self, key: Hashable):
        """The answer for ``key``; raises its DnsTempError, or Missing if not fetched yet."""
        try:
            answer = self.table[key]
        except KeyError:
            self.missing.add(key)
            raise Missing from None
        if isinstance(answer, DnsTempError):
            raise answer
        return answer

    async def fetch(self, keys: Iterable[Hashable]) -> None:
        """Fetch the answers not in the table yet, concurrently."""
        import asyncio
        await asyncio.gather(*(self._store(key) for key in set(keys) if key not in self.table))

    async def _store(self, key: Hashable) -> None:
        try:
            self.table[key] = await self._fetch(key)
        except DnsTempError as err:
            self.table[key] = err

    async def run(self, evaluate: Callable[[], object], rounds: int, offload: bool = False):
        """The outcome of ``evaluate()`` once it lacks no answer; DnsTempError after
        ``rounds`` evaluations that each still lacked some."""
        import asyncio
        for _ in range(rounds):
            self.missing = set()
            try:
                outcome = await asyncio.to_thread(evaluate) if offload else evaluate()
            except Missing:
                pass
            if not self.missing:
                return outcome
            await self.fetch(self.missing)
        raise DnsTempError(f"more than {rounds} rounds of DNS look-ups")
