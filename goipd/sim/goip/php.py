"""The v1.28.4 request path: one vendor API call answered as SMS Server v1.28.4's PHP answers
it, through its SQL (goip_sql.py), up to where its engine (sending.py) takes over."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import structlog

from goipd.sim.goip.inbox import ReceiveRow
from goipd.sim.goip.lines import SimLine, SubTask
from goipd.sim.goip.sending import SendingServer
from goipd.sim.goip.state import APIS
from goipd.sim.goip_sql import (
    BadQuery,
    PhpFatal,
    mysql_ci_key,
    mysql_number,
    php_empty,
    php_json_encode,
    php_prop,
    php_string,
    run_statement,
    sms_parts,
    stored_text,
    varchar,
)

log = structlog.get_logger("goipd.sim")

SENDS_BATCH: Final = 2000
"""The PHP inserts the recipients' rows 2000 per statement."""
DB_DOWN_TEXT: Final = "Could not connect"
MBSTRING_WARNING: Final = "Warning: need install php-mbstring module<br>"
PHP_USER_ID: Final = "1"
"""The id of the SMS Server's only user (root) in its `user` table."""
PHP_HEADERS: Final = {"content": "application/json;chartset=uft-8"}
"""The (misspelt, misnamed) header the PHP sends after a password login."""
SQL_USER: Final = "SELECT id,permissions FROM user WHERE username='{}' and password='{}' "
SQL_IP_LOOKUP: Final = (
    "SELECT user_id FROM token WHERE ip='{}' and token='{}' and insert_time > NOW()-INTERVAL 1 HOUR"
)
SQL_LINE: Final = "select id from goip where name='{}' and gsm_status='LOGIN'"
SQL_PROVIDER: Final = "select * from prov where prov='{}'"
SQL_PROVIDER_LINE: Final = "select id from goip where provider='{}' and gsm_status='LOGIN'"
SQL_MESSAGE: Final = (
    "INSERT INTO message (type,msg,userid,tel,prov,goipid,total) "
    "VALUES (100, '{}','{}','{}','{}','{}','{}')"
)
SQL_SENDS: Final = "insert into sends (messageid,userid,telnum,provider,total) values"
SQL_QUERYSMS_HEAD: Final = "select * from sends left join goip on goip.id=goipid "
SQL_QUERYSMS_TAIL: Final = " order by sends.id"


@dataclass(frozen=True)
class PhpReply:
    """What v1.28.4's PHP answers: always `text/html`; 401 with an empty body."""

    status: int
    text: str
    headers: Mapping[str, str] = field(default_factory=dict)


class PhpServer(SendingServer):
    """A server's v1.28.4 PHP: `php_request` and the SQL it runs."""

    async def php_request(
        self, api: str, data: Any, *, remote: str = "127.0.0.1", refuse_auth: bool = False
    ) -> PhpReply:
        """One API call answered as SMS Server v1.28.4's PHP answers it (`api_global.php`, then
        `sendsms/`, `querysms/` or `querylines/index.php`); `data` is the decoded body
        (`php_json_decode`: None when it was no JSON).

        A failing SQL statement ends the call with `Bad query: ...` and nothing after it
        happens. sendsms stores the task, then waits `engine_delay` for a slow or dead engine,
        then ACCEPTs. The document-profile methods (`send_sms`, `query_sms`, `query_lines`)
        stay as they are.
        """
        if api not in APIS:
            raise LookupError(f"no API {api}")
        out: list[str] = []
        headers: dict[str, str] = {}
        try:
            user = None if refuse_auth else self._php_auth(data, remote)
            if user is None:
                return PhpReply(401, "")
            headers = dict(PHP_HEADERS)
            if api == "querylines":
                out.append(self._php_querylines())
            elif api == "querysms":
                out.append(self._php_querysms(data))
            else:
                task_id = self._php_sendsms(data, user, out)
                if task_id is not None:
                    await self._engine_answer()
                    out.append(php_json_encode({"result": "ACCEPT", "taskID": task_id}))
                    self.counters["tasks_accepted"] += 1
        except BadQuery as exc:
            self.counters["bad_query"] += 1
            log.info("sim_bad_query", server=self.name, api=api, error=exc.error)
            out.append(exc.reply)
        except PhpFatal:
            # PHP 5 with display_errors off: a 500, unless output had started (the warning).
            self.counters["php_fatal"] += 1
            if not out:
                return PhpReply(500, "", headers)
        return PhpReply(200, "".join(out), headers)

    def _php_auth(self, data: Any, remote: str) -> str | None:
        """api_global.php: the user's id, or None (401). The user name goes into SQL as posted."""
        auth = php_prop(data, "auth")
        username, password = php_prop(auth, "username"), php_prop(auth, "password")
        if not (php_empty(auth) or php_empty(username) or php_empty(password)):
            digest = _md5(password)
            name, _ = run_statement(SQL_USER, [php_string(username), digest])
            known = mysql_ci_key(name) == mysql_ci_key(self.username)
            return PHP_USER_ID if known and digest == _md5(self.password) else None
        token = php_prop(data, "token")
        if not php_empty(token):
            # The simulator issues no tokens (there is no doauth here): the lookup finds none.
            run_statement(SQL_IP_LOOKUP, [remote, php_string(token)])
        return None

    def _php_querylines(self) -> str:
        """`select * from goip order by name`: every value a string as MySQL returns it, online
        and reg as the engine last wrote them."""
        rows: list[dict[str, str]] = []
        for line in sorted(self.lines.values(), key=lambda line: mysql_ci_key(line.line_id)):
            alive, status = self._db_line(line)
            row = {
                "goip_line": line.line_id,
                "online": "1" if alive else "0",
                "reg": status,
                "remain_sms": str(line.remain_sms),
                "day_remain_sms": str(line.day_remain_sms),
            }
            if line.num:
                row["num"] = line.num
            rows.append(row)
        return php_json_encode(rows)

    def _php_querysms(self, data: Any) -> str:
        """`sends LEFT JOIN goip` for `<messageid>[.<telnum>]`; an unknown task is `[]`."""
        raw = php_prop(data, "taskID")
        if php_empty(raw):
            return "[]"
        ids = php_string(raw).split(".")
        where, values = " where messageid='{}'", [ids[0]]
        number = ids[1] if len(ids) > 1 else None
        if not php_empty(number):
            where += " and telnum='{}'"
            values.append(str(number))
        parsed = run_statement(SQL_QUERYSMS_HEAD + where + SQL_QUERYSMS_TAIL, values)
        message_id = mysql_number(parsed[0])
        subs: list[SubTask] = []
        if message_id.is_integer() and message_id > 0:
            subs = self.tasks.get(str(int(message_id)), [])
        if len(parsed) > 1:
            key = mysql_ci_key(parsed[1])
            subs = [sub for sub in subs if mysql_ci_key(sub.number) == key]
        return php_json_encode([self._php_report(sub) for sub in subs])

    def _php_sendsms(self, data: Any, user: str, out: list[str]) -> str | None:
        """sendsms/index.php up to its engine wait: the stored task's id, or None when it
        answered already (REJECT, into `out`). Raises BadQuery where a statement fails; the
        rows stored before it stay."""
        content, number = php_prop(data, "content"), php_prop(data, "number")
        goip_line, provider = php_prop(data, "goip_line"), php_prop(data, "provider")
        parts = sms_parts(_php_text(content), self.mbstring)
        if not self.mbstring:
            out.append(MBSTRING_WARNING)
        if php_empty(content) or php_empty(number):
            self._php_reject(out, "content or number error")
            return None
        prov_id = goip_id = ""
        pin_line = pin_provider = None
        if not php_empty(goip_line):
            (name,) = run_statement(SQL_LINE, [php_string(goip_line)])
            line = self._db_find_line(name)
            if line is None:
                self._php_reject(out, "none_line")
                return None
            pin_line, goip_id = line.line_id, str(self._row_id("goip", line.line_id))
        elif not php_empty(provider):
            (name,) = run_statement(SQL_PROVIDER, [php_string(provider)])
            key = mysql_ci_key(name)
            pin_provider = next(
                (ln.provider for ln in self.lines.values() if mysql_ci_key(ln.provider) == key),
                None,
            )
            if pin_provider is None:
                self._php_reject(out, "none_provider")
                return None
            prov_id = str(self._row_id("prov", pin_provider))
            run_statement(SQL_PROVIDER_LINE, [prov_id])
            if not any(
                ln.provider == pin_provider and self._db_line(ln)[1] == "LOGIN"
                for ln in self.lines.values()
            ):
                self._php_reject(out, "none_line")
                return None
        elif not any(self._db_line(ln)[1] == "LOGIN" for ln in self.lines.values()):
            self._php_reject(out, "none_line")
            return None
        numbers = php_string(number)
        message = run_statement(
            SQL_MESSAGE, [php_string(content), user, numbers, prov_id, goip_id, str(parts)]
        )
        text = stored_text(message[0])
        self.next_task_id += 1
        task_id = str(self.next_task_id)
        rows: list[SubTask] = []
        self.tasks[task_id] = rows
        self.counters["tasks_stored"] += 1
        now, stamp = time.monotonic(), datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        ready = now + (self.engine_delay if self.engine == "slow" else 0.0)
        mobiles = list(dict.fromkeys(numbers.split(",")))  # explode + array_unique
        try:
            for start in range(0, len(mobiles), SENDS_BATCH):
                batch = mobiles[start : start + SENDS_BATCH]
                row = f"({task_id},'{{}}','{{}}','{{}}','{{}}'),"
                # PHP 5 "removes" the last comma by writing "" into it: a NUL byte.
                statement = SQL_SENDS + (row * len(batch))[:-1] + "\0"
                values = [value for tel in batch for value in (user, tel, prov_id, str(parts))]
                parsed = run_statement(statement, values)
                for index in range(len(batch)):
                    sub = SubTask(
                        task_id,
                        varchar(parsed[4 * index + 1], 20),  # sends.telnum varchar(20)
                        text,
                        None,
                        parts=parts,
                        stored=True,
                        send_time=stamp,
                        stored_at=now,
                        ready_at=ready,
                        pin_line=pin_line,
                        pin_provider=pin_provider,
                    )
                    rows.append(sub)
                    self._unsent.append(sub)
                self.counters["recipients_stored"] += len(batch)
        finally:
            self._kick_engine()
        log.debug("sim_task_stored", server=self.name, task=task_id, recipients=len(rows))
        return task_id

    def _php_reject(self, out: list[str], reason: str) -> None:
        self.counters[f"rejected_{reason.replace(' ', '_')}"] += 1
        out.append(php_json_encode({"result": "REJECT", "reason": reason}))

    def _db_find_line(self, name: str) -> SimLine | None:
        key = mysql_ci_key(name)
        return next(
            (
                line
                for line in self.lines.values()
                if mysql_ci_key(line.line_id) == key and self._db_line(line)[1] == "LOGIN"
            ),
            None,
        )

    def _row_id(self, table: str, name: str) -> int:
        key = f"{table}:{name}"
        if key not in self._row_ids:
            self._last_row_id += 1
            self._row_ids[key] = self._last_row_id
        return self._row_ids[key]

    def _inbound_body(self, row: ReceiveRow) -> dict[str, Any]:
        """send_json.php's inbound push, from `receive LEFT JOIN goip on goip.id=goipid`: the
        line's name as it is now, null once that row is gone (line deleted or renamed)."""
        line = next(
            (name for name in self.lines if self._row_ids.get(f"goip:{name}") == row.goipid),
            None,
        )
        return {
            "goip_line": line,
            "from_number": row.srcnum,
            "content": row.msg,
            "recv_time": row.time,
        }


def _php_text(value: Any) -> str:
    """The text get_count_from_sms measures (strlen of a non-string is null: 1 part)."""
    try:
        return php_string(value) if isinstance(value, str | int | float) else ""
    except PhpFatal:
        return ""


def _md5(value: Any) -> str:
    """PHP's md5() of a posted password (of a JSON object: null, so '')."""
    try:
        text = php_string(value)
    except PhpFatal:
        return ""
    return hashlib.md5(text.encode("utf-8", "surrogatepass"), usedforsecurity=False).hexdigest()
