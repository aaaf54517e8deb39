"""Runs the Python Script tasks of a Kestra flow on this machine, the way a
Kestra worker with the Process task runner does, for trying the flows in this
directory against a Keybrake gateway without a Kestra server. It is not
Kestra: it knows the few things these flows use, and refuses anything else.

What it does as Kestra does:

* renders the flow's Pebble expressions (``{{ inputs.x }}``,
  ``{{ secret('NAME') }}``, ``{{ outputs.task.vars.name }}``,
  ``{{ taskrun.value }}``, ``{{ trigger.date | date('yyyy-MM') }}``,
  ``| toJson``, ``fromJson(...)``), strictly: an undefined variable fails
  the task;
* runs each ``io.kestra.plugin.scripts.python.Script`` as a fresh ``python``
  process from the script's first line, with only the task's ``env`` (plus
  PATH and HOME), and reads outputs from ``::{"outputs": {...}}::`` lines
  (``Kestra.outputs``);
* ``retry`` re-runs a failed task's script from its first line, up to
  ``maxAttempts`` attempts in all (``taskrun.attemptsCount`` counts from 0);
  waits are the retry's intervals times ``time_scale`` (0 by default: no wait);
* ``io.kestra.plugin.core.flow.EachParallel`` runs its tasks for every item of
  ``value`` at once, each item in its own processes (``concurrent`` caps them);
* ``afterExecution`` tasks run once the execution ended, whatever its state;
* ``concurrency.limit`` with ``behavior: QUEUE`` queues executions of the flow
  started with ``run_many`` (unless told to ignore the limit);
* a Schedule execution gets ``trigger.date``; a Webhook execution gets
  ``trigger.body`` and ``trigger.headers``, and a wrong key is refused (Kestra
  answers 404).

``beforeCommands`` are not run: the Python running this module must already
have the flows' packages (``pip install -r requirements/examples.txt``).

    python examples/kestra/localrun.py examples/kestra/charge_customer.yml \\
        --input customer_id=cus_123 --input amount_cents=2999 --input billing_period=2026-06 \\
        --secret KEYBRAKE_URL=http://127.0.0.1:10000 --secret KEYBRAKE_ADMIN_KEY=... --secret BILLING_DB_URL=...
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

SCRIPT = "io.kestra.plugin.scripts.python.Script"
EACH_PARALLEL = "io.kestra.plugin.core.flow.EachParallel"
LOG = "io.kestra.plugin.core.log.Log"
PROCESS_RUNNER = "io.kestra.plugin.core.runner.Process"
SCHEDULE = "io.kestra.plugin.core.trigger.Schedule"
WEBHOOK = "io.kestra.plugin.core.trigger.Webhook"

FLOW_KEYS = {"id", "namespace", "description", "labels", "inputs", "variables", "tasks", "afterExecution",
             "triggers", "concurrency"}
TASK_KEYS = {
    SCRIPT: {"id", "type", "description", "script", "env", "retry", "taskRunner", "beforeCommands",
             "containerImage", "timeout", "outputFiles"},
    EACH_PARALLEL: {"id", "type", "description", "value", "tasks", "concurrent"},
    LOG: {"id", "type", "description", "message", "level"},
}


class FlowError(Exception):
    """The flow uses something this runner does not do, or is not valid."""


class RenderError(FlowError):
    """A Pebble expression could not be rendered (Kestra fails the task the same way)."""


class WebhookNotFound(FlowError):
    """A webhook delivery with the wrong key (Kestra answers 404 and starts nothing)."""


# ---------------------------------------------------------------------------
# Pebble, the subset these flows use


_TOKEN = re.compile(r"""\s*(?:(?P<num>\d+)|(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>[.|()\[\],]))""")
_JAVA_DATE = [("yyyy", "%Y"), ("MM", "%m"), ("dd", "%d"), ("HH", "%H"), ("mm", "%M"), ("ss", "%S")]
_UNDEFINED = object()


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise RenderError(f"cannot parse expression {{{{ {expr} }}}} at {expr[pos:]!r}")
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Expr:
    def __init__(self, expr: str, context: dict, functions: dict) -> None:
        self.src, self.toks, self.i = expr, _tokens(expr), 0
        self.context, self.functions = context, functions

    def peek(self) -> Optional[tuple[str, str]]:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, value: Optional[str] = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise RenderError(f"in {{{{ {self.src} }}}}: expected {value or 'more'}, got {tok}")
        self.i += 1
        return tok

    def parse(self) -> Any:
        value = self.filtered()
        if self.peek() is not None:
            raise RenderError(f"in {{{{ {self.src} }}}}: unexpected {self.peek()[1]!r} (not supported here)")
        return value

    def filtered(self) -> Any:
        value = self.primary()
        while self.peek() == ("op", "|"):
            self.take("|")
            name = self.take()[1]
            args = self.args() if self.peek() == ("op", "(") else []
            value = _filter(name, value, args, self.src)
        return value

    def args(self) -> list:
        self.take("(")
        args = []
        while self.peek() != ("op", ")"):
            args.append(self.filtered())
            if self.peek() == ("op", ","):
                self.take(",")
        self.take(")")
        return args

    def primary(self) -> Any:
        kind, text = self.take()
        if kind == "num":
            return int(text)
        if kind == "str":
            return bytes(text[1:-1], "utf-8").decode("unicode_escape")
        if kind != "name":
            raise RenderError(f"in {{{{ {self.src} }}}}: unexpected {text!r}")
        if self.peek() == ("op", "("):
            if text not in self.functions:
                raise RenderError(f"unknown function {text}() in {{{{ {self.src} }}}}")
            value = self.functions[text](*self.args())
        elif text in ("true", "false"):
            return text == "true"
        else:
            value = self.context.get(text, _UNDEFINED)
        path = text
        while self.peek() in (("op", "."), ("op", "[")):
            if self.take()[1] == ".":
                attr = self.take()[1]
            else:
                attr = self.filtered()
                self.take("]")
            path += f".{attr}"
            value = _get(value, attr)
        if value is _UNDEFINED:
            raise RenderError(f"variable '{path}' is not defined (in {{{{ {self.src} }}}})")
        return value


def _get(value: Any, attr: Any) -> Any:
    if isinstance(value, dict):
        return value.get(attr, _UNDEFINED)
    if isinstance(value, list) and isinstance(attr, int):
        return value[attr] if -len(value) <= attr < len(value) else _UNDEFINED
    return _UNDEFINED


def _filter(name: str, value: Any, args: list, src: str) -> Any:
    if name == "toJson":
        return json.dumps(value, separators=(",", ":"))
    if name == "date":
        if len(args) != 1:
            raise RenderError(f"date() takes a format in {{{{ {src} }}}}")
        when = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        fmt = args[0]
        for java, py in _JAVA_DATE:
            fmt = fmt.replace(java, py)
        if re.search(r"[A-Za-z]", re.sub(r"%[YmdHMS]", "", fmt)):
            raise RenderError(f"date format {args[0]!r} uses letters this runner does not know")
        return when.strftime(fmt)
    raise RenderError(f"unknown filter '{name}' in {{{{ {src} }}}}")


def _stringify(value: Any, src: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        raise RenderError(f"{{{{ {src} }}}} is a map or list; render it with '| toJson'")
    if value is None:
        return ""
    return str(value)


def render(template: Any, context: dict, functions: dict) -> Any:
    """Renders every ``{{ ... }}`` in a string (recursively in lists and maps)."""
    if isinstance(template, dict):
        return {k: render(v, context, functions) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, context, functions) for v in template]
    if not isinstance(template, str):
        return template
    if "{%" in template or "{#" in template:
        raise RenderError("Pebble tags and comments ({% %}, {# #}) are not supported by this runner")
    return re.sub(r"\{\{(.*?)\}\}",
                  lambda m: _stringify(_Expr(m.group(1), context, functions).parse(), m.group(1).strip()),
                  template, flags=re.S)


# ---------------------------------------------------------------------------
# Executions


@dataclass
class Attempt:
    number: int
    exit_code: int
    stdout: str
    stderr: str
    outputs: dict
    started: float
    ended: float


@dataclass
class TaskRun:
    task_id: str
    value: Optional[str] = None
    state: str = "CREATED"
    attempts: list[Attempt] = field(default_factory=list)
    outputs: dict = field(default_factory=dict)
    error: Optional[str] = None


@dataclass
class Execution:
    id: str
    flow_id: str
    namespace: str
    inputs: dict
    trigger: Optional[dict]
    state: str = "CREATED"
    taskruns: list[TaskRun] = field(default_factory=list)
    outputs: dict = field(default_factory=dict)
    started: float = 0.0
    ended: float = 0.0

    def taskrun(self, task_id: str, value: Optional[str] = None) -> TaskRun:
        found = [t for t in self.taskruns if t.task_id == task_id and (value is None or t.value == value)]
        if len(found) != 1:
            raise KeyError(f"{len(found)} task runs for {task_id!r} (value {value!r})")
        return found[0]


def _duration(text: Optional[str]) -> float:
    """ISO-8601 durations as Kestra writes them: PT15S, PT5M, PT1H30M, PT0.25S, P1D."""
    if not text:
        return 0.0
    m = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?", text)
    if not m:
        raise FlowError(f"not an ISO-8601 duration: {text!r}")
    d, h, mi, s = m.groups()
    return int(d or 0) * 86400 + int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0)


def _retry_delays(retry: Optional[dict]) -> tuple[int, list[float]]:
    """Attempts in all, and the wait before each retry."""
    if not retry:
        return 1, []
    kind = retry.get("type")
    attempts = int(retry.get("maxAttempts", 1))
    if attempts < 1:
        raise FlowError("retry.maxAttempts must be at least 1")
    interval = _duration(retry.get("interval"))
    if kind == "constant":
        return attempts, [interval] * (attempts - 1)
    if kind == "exponential":
        cap = _duration(retry.get("maxInterval")) or float("inf")
        factor = float(retry.get("delayFactor", 2))
        return attempts, [min(cap, interval * factor ** i) for i in range(attempts - 1)]
    raise FlowError(f"retry type {kind!r} is not supported by this runner (constant, exponential)")


_OUTPUT_LINE = re.compile(r"^::(\{.*\})::$")


class LocalRunner:
    """Runs one flow file. ``secrets`` are what ``secret('NAME')`` returns
    (by default Kestra OSS's ``SECRET_NAME`` environment variables, base64)."""

    def __init__(self, flow_path: str | os.PathLike, *, secrets: Optional[dict[str, str]] = None,
                 python: str = sys.executable, time_scale: float = 0.0, workdir: Optional[str] = None,
                 task_timeout: float = 120.0) -> None:
        self.path = Path(flow_path)
        self.flow = yaml.safe_load(self.path.read_text())
        self.secrets = dict(secrets) if secrets is not None else _secrets_from_env()
        self.python = python
        self.time_scale = time_scale
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kestra-localrun-"))
        self.task_timeout = task_timeout
        self._check_flow()
        concurrency = self.flow.get("concurrency") or {}
        self.concurrency_limit: Optional[int] = concurrency.get("limit")
        self._slots = threading.Semaphore(self.concurrency_limit) if self.concurrency_limit else None

    # ---------- validation ----------

    def _check_flow(self) -> None:
        unknown = set(self.flow) - FLOW_KEYS
        if unknown:
            raise FlowError(f"{self.path.name}: unknown flow properties {sorted(unknown)}")
        for key in ("id", "namespace", "tasks"):
            if key not in self.flow:
                raise FlowError(f"{self.path.name}: a flow needs '{key}'")
        concurrency = self.flow.get("concurrency")
        if concurrency is not None and (set(concurrency) - {"limit", "behavior"}
                                        or concurrency.get("behavior", "QUEUE") not in ("QUEUE", "CANCEL", "FAIL")):
            raise FlowError(f"{self.path.name}: concurrency takes limit and behavior (QUEUE, CANCEL, FAIL)")
        for task in self._all_tasks(self.flow["tasks"] + self.flow.get("afterExecution", [])):
            kind = task.get("type")
            if kind not in TASK_KEYS:
                raise FlowError(f"task {task.get('id')!r}: type {kind!r} is not supported by this runner")
            unknown = set(task) - TASK_KEYS[kind]
            if unknown:
                raise FlowError(f"task {task['id']!r}: unknown properties {sorted(unknown)}")
            if kind == SCRIPT:
                runner = (task.get("taskRunner") or {}).get("type")
                if runner != PROCESS_RUNNER:
                    raise FlowError(f"task {task['id']!r}: this runner emulates taskRunner {PROCESS_RUNNER} only")
                _retry_delays(task.get("retry"))
        for trigger in self.flow.get("triggers", []):
            if trigger.get("type") not in (SCHEDULE, WEBHOOK):
                raise FlowError(f"trigger {trigger.get('id')!r}: type {trigger.get('type')!r} is not supported")

    def _all_tasks(self, tasks: list[dict]):
        for t in tasks:
            yield t
            yield from self._all_tasks(t.get("tasks", []))

    def trigger_of_type(self, kind: str) -> dict:
        found = [t for t in self.flow.get("triggers", []) if t.get("type") == kind]
        if not found:
            raise FlowError(f"{self.path.name} has no {kind.rsplit('.', 1)[-1]} trigger")
        return found[0]

    # ---------- starting executions ----------

    def run(self, inputs: Optional[dict] = None, *, trigger: Optional[dict] = None,
            ignore_concurrency: bool = False) -> Execution:
        """One execution, to its end (queued first if the flow's concurrency limit is reached)."""
        execution = Execution(id=_execution_id(), flow_id=self.flow["id"], namespace=self.flow["namespace"],
                              inputs=self._inputs(inputs or {}), trigger=trigger)
        if self._slots is not None and not ignore_concurrency:
            execution.state = "QUEUED"
            with self._slots:
                return self._execute(execution)
        return self._execute(execution)

    def run_scheduled(self, date: dt.datetime, **kw: Any) -> Execution:
        """An execution started by the flow's Schedule trigger for ``date``."""
        trigger = self.trigger_of_type(SCHEDULE)
        return self.run(trigger={"id": trigger["id"], "date": date.isoformat(), "next": None, "previous": None}, **kw)

    def deliver_webhook(self, key: str, body: Any, headers: Optional[dict] = None, **kw: Any) -> Execution:
        """An execution started by a POST to the flow's webhook URL with ``key``."""
        trigger = self.trigger_of_type(WEBHOOK)
        expected = render(trigger["key"], {}, self._functions())
        if key != expected:
            raise WebhookNotFound("404: no flow with this webhook key")
        return self.run(trigger={"id": trigger["id"], "body": body, "headers": headers or {}}, **kw)

    def run_many(self, starts: list, *, stagger: float = 0.0) -> list[Execution]:
        """Starts several executions (callables taking no argument, each
        calling ``run``/``run_scheduled``/``deliver_webhook``) ``stagger``
        seconds apart, each in its own thread, and waits for them all."""
        with ThreadPoolExecutor(max_workers=len(starts)) as pool:
            futures = []
            for i, start in enumerate(starts):
                if i and stagger:
                    time.sleep(stagger)
                futures.append(pool.submit(start))
            return [f.result() for f in futures]

    def _inputs(self, given: dict) -> dict:
        declared = {i["id"]: i for i in self.flow.get("inputs", [])}
        unknown = set(given) - set(declared)
        if unknown:
            raise FlowError(f"unknown inputs {sorted(unknown)}")
        values = {}
        for name, spec in declared.items():
            if name in given:
                value = given[name]
            elif "defaults" in spec:
                value = spec["defaults"]
            elif spec.get("required", True):
                raise FlowError(f"input {name!r} is required")
            else:
                continue
            kind = spec.get("type", "STRING").upper()
            if kind == "INT":
                value = int(value)
            elif kind == "JSON":
                value = json.loads(value) if isinstance(value, str) else value
            elif kind == "STRING":
                value = str(value)
            else:
                raise FlowError(f"input type {kind} is not supported by this runner")
            values[name] = value
        return values

    # ---------- running ----------

    def _functions(self) -> dict:
        def secret(name: str) -> str:
            if name not in self.secrets:
                raise RenderError(f"secret '{name}' is not defined")
            return self.secrets[name]

        return {"secret": secret, "fromJson": lambda text: json.loads(text)}

    def _context(self, execution: Execution, taskrun: Optional[dict] = None) -> dict:
        ctx = {
            "flow": {"id": self.flow["id"], "namespace": self.flow["namespace"]},
            "execution": {"id": execution.id, "state": execution.state},
            "inputs": execution.inputs,
            "outputs": execution.outputs,
            "vars": self.flow.get("variables", {}),
        }
        if execution.trigger is not None:
            ctx["trigger"] = execution.trigger
        if taskrun is not None:
            ctx["taskrun"] = taskrun
        return ctx

    def _execute(self, execution: Execution) -> Execution:
        execution.state, execution.started = "RUNNING", time.time()
        try:
            ok = self._run_tasks(execution, self.flow["tasks"], value=None)
        except FlowError as e:
            execution.taskruns.append(TaskRun(task_id="(flow)", state="FAILED", error=str(e)))
            ok = False
        execution.state = "SUCCESS" if ok else "FAILED"
        # afterExecution: runs whatever the state; its failures do not change it.
        self._run_tasks(execution, self.flow.get("afterExecution", []), value=None)
        execution.ended = time.time()
        return execution

    def _run_tasks(self, execution: Execution, tasks: list[dict], value: Optional[str]) -> bool:
        for task in tasks:
            if not self._run_task(execution, task, value):
                return False
        return True

    def _run_task(self, execution: Execution, task: dict, value: Optional[str]) -> bool:
        kind = task["type"]
        if kind == EACH_PARALLEL:
            return self._each_parallel(execution, task, value)
        run = TaskRun(task_id=task["id"], value=value, state="RUNNING")
        execution.taskruns.append(run)
        if kind == LOG:
            try:
                print(render(task["message"], self._context(execution, {"value": value, "attemptsCount": 0}),
                             self._functions()))
                run.state = "SUCCESS"
            except RenderError as e:
                run.state, run.error = "FAILED", str(e)
            return run.state == "SUCCESS"
        attempts, delays = _retry_delays(task.get("retry"))
        for n in range(attempts):
            if n:
                time.sleep(delays[n - 1] * self.time_scale)
            attempt = self._script_attempt(execution, task, value, n)
            run.attempts.append(attempt)
            if attempt.exit_code == 0:
                run.state, run.outputs = "SUCCESS", attempt.outputs
                if value is None:
                    execution.outputs[task["id"]] = {"vars": attempt.outputs}
                else:
                    execution.outputs.setdefault(task["id"], {})[value] = {"vars": attempt.outputs}
                return True
        run.state, run.error = "FAILED", _last_error(run.attempts[-1].stderr)
        return False

    def _script_attempt(self, execution: Execution, task: dict, value: Optional[str], n: int) -> Attempt:
        started = time.time()
        try:
            ctx = self._context(execution, {"value": value, "attemptsCount": n})
            script = render(task["script"], ctx, self._functions())
            env = {k: str(v) for k, v in render(task.get("env") or {}, ctx, self._functions()).items()}
        except RenderError as e:
            return Attempt(n, 1, "", f"RenderError: {e}", {}, started, time.time())
        folder = self.workdir / execution.id / f"{task['id']}-{uuid.uuid4().hex[:8]}-{n}"
        folder.mkdir(parents=True)
        (folder / "main.py").write_text(script)
        base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR", "SYSTEMROOT") if k in os.environ}
        try:
            proc = subprocess.run([self.python, "main.py"], cwd=folder, env={**base, **env}, capture_output=True,
                                  text=True, timeout=self.task_timeout)
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as e:
            code, out, err = 124, e.stdout or "", f"timed out after {self.task_timeout}s"
        outputs: dict = {}
        for line in out.splitlines():
            m = _OUTPUT_LINE.match(line.strip())
            if m:
                outputs.update(json.loads(m.group(1)).get("outputs", {}))
        return Attempt(n, code, out if isinstance(out, str) else out.decode(), err if isinstance(err, str)
                       else err.decode(), outputs, started, time.time())

    def _each_parallel(self, execution: Execution, task: dict, value: Optional[str]) -> bool:
        ctx = self._context(execution, {"value": value, "attemptsCount": 0})
        raw = task["value"]
        items = render(raw, ctx, self._functions()) if isinstance(raw, str) else raw
        if isinstance(items, str):
            items = json.loads(items)
        if not isinstance(items, list):
            raise FlowError(f"task {task['id']!r}: value must be a JSON array")
        values = [v if isinstance(v, str) else json.dumps(v, separators=(",", ":")) for v in items]
        workers = int(task.get("concurrent", 0)) or max(1, len(values))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda v: self._run_tasks(execution, task["tasks"], v), values))
        return all(results)


def _last_error(stderr: str) -> str:
    """The exception line of a Python traceback (else the last line)."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*", line):
            return line
    return lines[-1] if lines else "failed"


def _execution_id() -> str:
    """Kestra's execution ids are 22-character base62 strings."""
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    n = uuid.uuid4().int
    out = ""
    while len(out) < 22:
        n, r = divmod(n, 62)
        out += alphabet[r]
    return out


def _secrets_from_env() -> dict[str, str]:
    """Kestra OSS reads secret('NAME') from the environment variable SECRET_NAME, base64-encoded."""
    out = {}
    for k, v in os.environ.items():
        if k.startswith("SECRET_"):
            try:
                out[k[len("SECRET_"):]] = base64.b64decode(v).decode()
            except ValueError:
                out[k[len("SECRET_"):]] = v
    return out


def _redacted(value: Any) -> Any:
    """Outputs without vault keys, for printing."""
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, str) and value.startswith("vk_"):
        return "vk_...(redacted)"
    return value


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("flow")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--secret", action="append", default=[], metavar="NAME=VALUE",
                        help="a secret (default: SECRET_NAME environment variables, base64, as Kestra OSS)")
    parser.add_argument("--schedule-date", help="start the execution as the Schedule trigger would, for this date")
    parser.add_argument("--webhook-body", help="start the execution as a webhook delivery with this JSON body")
    parser.add_argument("--webhook-key", help="the key in the webhook URL")
    parser.add_argument("--time-scale", type=float, default=0.0, help="multiply retry waits by this (default 0)")
    args = parser.parse_args(argv)
    secrets = _secrets_from_env()
    secrets.update(dict(s.split("=", 1) for s in args.secret))
    runner = LocalRunner(args.flow, secrets=secrets, time_scale=args.time_scale)
    inputs = dict(i.split("=", 1) for i in args.input)
    if args.schedule_date:
        execution = runner.run_scheduled(dt.datetime.fromisoformat(args.schedule_date), inputs=inputs)
    elif args.webhook_body is not None:
        execution = runner.deliver_webhook(args.webhook_key or "", json.loads(args.webhook_body), inputs=inputs)
    else:
        execution = runner.run(inputs)
    for run in execution.taskruns:
        label = run.task_id + (f"[{run.value[:40]}]" if run.value else "")
        print(f"{label}: {run.state} after {len(run.attempts)} attempt(s)" + (f" - {run.error}" if run.error else ""))
        for a in run.attempts:
            if a.exit_code:
                print(f"    attempt {a.number}: {_last_error(a.stderr)}")
    print(f"execution {execution.id}: {execution.state}")
    print(json.dumps(_redacted(execution.outputs), indent=2, default=str))
    return 0 if execution.state == "SUCCESS" else 1


if __name__ == "__main__":
    sys.exit(main())
