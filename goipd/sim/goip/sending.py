"""How a simulated SMS Server's recipients go out on its lines, in both profiles: one worker
per line sending one SMS at a time, the results and the report pushes, and v1.28.4's engine,
which hands the stored recipients to lines (and can be slow, die and restart)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from goipd.sim.goip.lines import (
    DEVICE_MAX_BYTES,
    LINE_LOST_CODE,
    NO_LINE_CODE,
    TOO_LONG_CODE,
    SimLine,
    SubTask,
    has_quota,
    live,
    take_quota,
)
from goipd.sim.goip.state import ServerState

if TYPE_CHECKING:
    from goipd.sim.goip.fleet import SimFleet

TASK_MAX_AGE: Final = 24 * 3600.0
"""The engine abandons recipients still unsent after this long (seconds)."""
ENGINE_TICK: Final = 1.0
"""While recipients wait (for quota, a line, a delay), the engine looks again this often."""


class SendingServer(ServerState):
    """A server's lines sending what they were given, and v1.28.4's engine giving it to them."""

    async def _line_worker(self, line_id: str) -> None:
        """One line sends one SMS at a time, in the order recipients were given to it."""
        outbox = self._outbox[line_id]
        while outbox:
            sub = outbox.popleft()
            sub.send = "sending"
            try:
                await asyncio.sleep(self.send_delay)
            finally:
                self._pending[line_id] -= sub.parts
                if self._pending[line_id] <= 0:
                    del self._pending[line_id]
            # Looked up again: the line may have been deleted or changed during the send.
            line = self.lines.get(line_id)
            if sub.stored:
                self._device_send(sub, line)
            elif line is None or not line.usable:
                self._finish(sub, line, LINE_LOST_CODE)
            elif line.fail_code is not None:
                self._finish(sub, line, line.fail_code)
            else:
                take_quota(line, sub.parts)
                self._finish(sub, line, None)
        self._outbox.pop(line_id, None)
        self._workers.pop(line_id, None)

    def _device_send(self, sub: SubTask, line: SimLine | None) -> None:
        """v1.28.4: the device sends what the engine handed it; the engine writes the result."""
        fits = len(sub.content.encode("utf-8", "surrogatepass")) <= DEVICE_MAX_BYTES
        can_send = line is not None and line.online and line.reg == "LOGIN"
        if self.engine == "dead":
            # The engine died with this one in flight: the phone gets it, nobody writes that
            # down, the row is `unsend` again and goes out once more after a restart (GoIP
            # reality §14, inferred from the engine binary).
            if line is not None and can_send and fits and line.fail_code is None:
                take_quota(line, sub.parts)
                self._record_sent(sub, "succeeded", None)
            self._requeue(sub)
        elif line is None or not can_send:
            self._finish(sub, line, LINE_LOST_CODE)
        elif not fits:
            self._finish(sub, line, TOO_LONG_CODE)
        elif line.fail_code is not None:
            self._finish(sub, line, line.fail_code)
        elif not has_quota(line, sub.parts):
            # The quota went while it waited on this line: the engine will look again.
            self._requeue(sub)
        else:
            take_quota(line, sub.parts)
            self._finish(sub, line, None)

    def _requeue(self, sub: SubTask) -> None:
        sub.send, sub.goip_line = "unsend", None
        self._unsent.insert(0, sub)
        self._kick_engine()

    async def _fail_unassigned(self, sub: SubTask) -> None:
        await asyncio.sleep(self.send_delay)
        self._finish(sub, None, NO_LINE_CODE)

    def _finish(self, sub: SubTask, line: SimLine | None, err_code: str | None) -> None:
        sub.send = "failed" if err_code is not None else "succeeded"
        sub.err_code = err_code
        self.counters[f"sends_{sub.send}"] += 1
        self._record_sent(sub, sub.send, err_code)
        receipt = err_code is None and line is not None and line.receipt
        self._require_fleet().spawn(self._report(sub, receipt))

    def _record_sent(self, sub: SubTask, result: str, err_code: str | None) -> None:
        record: dict[str, Any] = {
            "task_id": sub.task_id,
            "sub_task_id": sub.sub_task_id,
            "number": sub.number,
            "content": sub.content,
            "goip_line": sub.goip_line,
            "result": result,
            "err_code": err_code,
            "at": time.time(),
        }
        if sub.stored:
            record["parts"] = sub.parts
        self.sent.append(record)

    async def _report(self, sub: SubTask, receipt: bool) -> None:
        fleet = self._require_fleet()
        # Snapshot now: the receipt below must not leak into the first report.
        first = fleet.spawn(self._push_report(fleet, self._report_body(sub), php=sub.stored))
        if receipt:
            await asyncio.sleep(self.receipt_delay)
            sub.receipt = True
            # The receipt report must not overtake the send report it follows.
            await first
            await self._push_report(fleet, self._report_body(sub), php=sub.stored)
        else:
            await first

    def _report_body(self, sub: SubTask) -> dict[str, Any]:
        return self._php_report(sub) if sub.stored else dict(sub.report())

    async def _push_report(self, fleet: SimFleet, body: dict[str, Any], *, php: bool) -> str:
        if self.drop_reports:
            self.counters["reports_dropped_on_purpose"] += 1
            return "dropped"
        return await fleet.push(self, self.status_push_url, body, kind="status", php=php)

    def _php_report(self, sub: SubTask) -> dict[str, Any]:
        """A querysms element, also the status push body (send_json.php builds it alike)."""
        body: dict[str, Any] = {
            "taskID": sub.sub_task_id,
            # LEFT JOIN goip: null until the engine gave it a line, or once that line is gone.
            "goip_line": sub.goip_line if sub.goip_line in self.lines else None,
            "sendTime": sub.send_time or None,
            "send": sub.send,
        }
        if sub.send == "failed":
            body["err_code"] = sub.err_code
        if sub.receipt:
            body["receipt"] = 1
        return body

    # --- v1.28.4: the engine ------------------------------------------------------------------

    def _db_line(self, line: SimLine) -> tuple[bool, str]:
        """The line's (alive, gsm_status) in the database: only the engine writes them."""
        if self._frozen is not None:
            return self._frozen.get(line.line_id, (False, ""))
        if time.monotonic() < self._keepalive_at:
            return False, ""
        return live(line)

    async def _engine_answer(self) -> None:
        """do_cron: `CRON2` to the engine, then up to 3 × 5 s for its `OK`; ACCEPT either way."""
        if self.engine != "running":
            await asyncio.sleep(self.engine_delay)

    def _set_engine(self, engine: str) -> None:
        if engine == self.engine:
            return
        if engine == "dead":
            self._frozen = {line.line_id: self._db_line(line) for line in self.lines.values()}
            self._recall()
        elif self.engine == "dead":
            # A restart: lines read offline until their next keepalive.
            self._frozen = None
            self._keepalive_at = time.monotonic() + self.keepalive_after
            self.counters["engine_restarts"] += 1
        self.engine = engine

    def _recall(self) -> None:
        """A dying engine forgets what it had handed to lines but not yet sent."""
        recalled: list[SubTask] = []
        for line_id, outbox in self._outbox.items():
            back = [sub for sub in outbox if sub.stored]
            if not back:
                continue
            kept = [sub for sub in outbox if not sub.stored]
            outbox.clear()
            outbox.extend(kept)
            for sub in back:
                self._pending[line_id] -= sub.parts
                sub.send, sub.goip_line = "unsend", None
            if self._pending[line_id] <= 0:
                del self._pending[line_id]
            recalled.extend(back)
        self._unsent[:0] = recalled

    def _kick_engine(self) -> None:
        if not self._unsent or self._fleet is None:
            return
        self._engine_wake.set()
        if self._engine_task is None or self._engine_task.done():
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return  # in-process use without a loop: the next request starts it
            self._engine_task = self._fleet.spawn(self._engine_loop())

    async def _engine_loop(self) -> None:
        """The engine gives each stored recipient, oldest first, a line that may send it."""
        while self._unsent:
            self._engine_wake.clear()
            wait = self._engine_dispatch()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
            # arrives as the event is set, and closing the simulator would wait for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._engine_wake.wait()

    def _engine_dispatch(self) -> float | None:
        """One pass over the queue; how long to sleep before the next (None: until woken)."""
        if self.engine == "dead":
            return None
        now = time.monotonic()
        if now < self._keepalive_at:
            return self._keepalive_at - now
        wait = ENGINE_TICK
        waiting: list[SubTask] = []
        for sub in self._unsent:
            if now - sub.stored_at > TASK_MAX_AGE:
                self.counters["recipients_abandoned"] += 1
            elif sub.ready_at > now:
                wait = min(wait, sub.ready_at - now)
                waiting.append(sub)
            elif (line_id := self._engine_pick(sub)) is None:
                waiting.append(sub)
            else:
                self._engine_assign(sub, line_id)
        self._unsent = waiting
        return wait

    def _engine_pick(self, sub: SubTask) -> str | None:
        """The task's line, else the next line (round robin) of its provider or of any: one
        the engine sees as LOGIN with quota for all of the text's parts."""
        candidates = [sub.pin_line] if sub.pin_line is not None else list(self._queue)
        for line_id in candidates:
            line = self.lines.get(line_id)
            if line is None or (sub.pin_provider is not None and line.provider != sub.pin_provider):
                continue
            if self._db_line(line) != (True, "LOGIN") or not has_quota(
                line, sub.parts, self._pending[line_id]
            ):
                continue
            if line_id in self._queue:
                self._queue.remove(line_id)
                self._queue.append(line_id)
            return line_id
        return None

    def _engine_assign(self, sub: SubTask, line_id: str) -> None:
        sub.goip_line = line_id
        self._pending[line_id] += sub.parts
        self._outbox.setdefault(line_id, deque()).append(sub)
        worker = self._workers.get(line_id)
        if worker is None or worker.done():
            self._workers[line_id] = self._require_fleet().spawn(self._line_worker(line_id))
