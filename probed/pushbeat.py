"""`--beat-to URL`: this probed beats to another probed's admin listener while a group passes.

Multi-node vLLM without Ray (`--nnodes`, `--node-rank`, headless workers that serve no HTTP):
each worker pod's probed watches its own worker process and, while its `ready` group passes,
POSTs `/heartbeat/NAME` to the leader's admin listener every `--beat-every`; the leader's
`heartbeat` check (`--worker-ranks N`) then fails the group's readiness when a rank goes quiet.
A worker that drains (preStop) or whose process died stops beating at once. Logs one line per
change between beating and not, never per beat.
"""

import asyncio
from typing import Dict, Optional

from .client import fetch, read_bearer_token
from .eventlog import EventLog
from .pod import Pod

BEAT_TIMEOUT = 2.0  # deadline of one push; a slower leader misses this beat, not the next
BEAT_MAX_REPLY = 64 * 1024  # an admin reply is a line


async def push_beat(base_url: str, name: str, token_file: Optional[str], timeout: float,
                    remove: bool = False) -> str:
    """POST (or DELETE) /heartbeat/NAME; returns the reply's text, raises on a non-2xx."""
    headers: Dict[str, str] = {}
    try:
        token = read_bearer_token(token_file) if token_file else None
    except ValueError as exc:  # not a token: the setup failed, not the usage
        raise OSError(str(exc)) from None
    if token:
        headers["Authorization"] = "Bearer " + token
    resp = await fetch(base_url + "/heartbeat/" + name, method="DELETE" if remove else "POST",
                       headers=headers, timeout=timeout, max_body=BEAT_MAX_REPLY)
    text = resp.body.decode("utf-8", "replace").strip()
    if not 200 <= resp.status < 300:
        raise RuntimeError("%s: HTTP %d%s" % (base_url, resp.status,
                                              ": " + text.splitlines()[0] if text else ""))
    return text


class BeatPusher:
    """Pushes this pod's heartbeat to a leader while `group` passes."""

    def __init__(self, url: str, name: str, every: float, token_file: Optional[str], group: str,
                 pod: Pod, log: EventLog) -> None:
        self.url, self.name, self.every, self.token_file = url, name, every, token_file
        self.group, self.pod, self.log = group, pod, log
        self.state = ""  # "beating", "held" (the group fails) or "failed": logged on change
        self._task: Optional["asyncio.Task[None]"] = None

    def start(self) -> None:
        """Start beating (inside the running loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop beating (a leader sees this pod go silent after its window)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await self.once()
            await asyncio.sleep(self.every)

    async def once(self) -> None:
        """One beat if the group passes; the outcome is logged when it differs from the last."""
        verdict = self.pod.verdicts[self.group]
        if not verdict.ok:
            self._note("held", "heartbeat held", reason="%s fails: %s" % (
                self.group, verdict.reason))
            return
        try:
            await push_beat(self.url, self.name, self.token_file, BEAT_TIMEOUT)
        except Exception as exc:  # any failure is one line; the next beat tries again
            self._note("failed", "heartbeat not delivered", error=str(exc))
            return
        self._note("beating", "heartbeat delivered")

    def _note(self, state: str, msg: str, **fields: object) -> None:
        if state != self.state:
            self.state = state
            emit = self.log.info if state == "beating" else self.log.warn
            emit(msg, to=self.url, name=self.name, **fields)
