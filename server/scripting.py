"""What every front end (``vsl serve`` and each of its workers, ``vsl policyd``,
``vsl milter``) runs its policy with: the ``[state]`` store, an engine over it, the
script threads, the reloadable :class:`Policy`, and the stage runner of a session.

    scripting = Scripting(config)         # PolicyError if the scripts are bad
    runner = scripting.new_runner()       # one session's StageRunner
    await scripting.close()               # when the front end stops
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial

from vsl.engine import Engine
from vsl.stdlib import new_engine
from vsl.stdlib.support.bounce.shared import shipped
from vsl.stdlib.support.state import StateStore

from .config import Config
from .policy import Policy
from .stages import StageRunner
from .state_store import open_state


class Scripting:
    """One process's policy and what runs it. ``engine`` and ``state``: given instead of
    the ones ``config`` makes (tests, ``vsl test``). ``bounce::classify`` asks the
    operator's learned bounces first; given ``on_self_learned`` (a front end that delivers),
    self-learning (``[bounce] self_learning``) is on too and tells it of each example kept."""

    def __init__(self, config: Config, engine: Engine | None = None,
                 state: StateStore | None = None, on_self_learned=None):
        self.state = state if state is not None else open_state(config)
        engine = engine or new_engine(config.script_limits, config.dns.resolver_defaults(),
                                      self.state, config.metrics.script, use_cache=True)
        # stage functions that may run long (Script.call_off_loop)
        self.pool = ThreadPoolExecutor(config.script_threads, "vsl-script")
        self.policy = Policy(engine, config.scripts)
        self.new_runner = partial(StageRunner, self.policy, self.pool, config.fallback_reply)
        auto = config.auto_learned_bounces if on_self_learned else None
        shipped().learn_from(config.learned_bounces, auto, on_learned=on_self_learned)

    async def close(self) -> None:
        """Close the state store and let the script threads end."""
        await self.state.close()
        self.pool.shutdown(wait=False)
