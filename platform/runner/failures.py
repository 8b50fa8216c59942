"""A failed trial's error in one line: what died and why, from the text Ray Tune keeps.

Tune appends each failure of a trial to its error file as ``Failure # N (occurred at ...)``
followed by ``str(exception)``. For a Python exception in the trial that is a traceback, whose
last line (``DatasetError: ...``) says it all. For a worker process or a node that died it is
Ray's paragraph: ``The actor died unexpectedly before finishing this task.``, the actor's
class, id, pid and address one per line, then a line of several hundred characters on what
happened (``The actor is dead because its worker process has died. Worker exit type: ...
Worker exit detail: ...``, or ``The actor died because its node has died. ...``). A multi-worker
trial whose Ray Train worker died holds the same paragraph inside its traceback.
:func:`short_error` turns either into one line for the terminal, the store and MLflow; the
whole text goes to the study's ``ray.log`` (``platform.runner.callbacks``).
"""
from __future__ import annotations

import re
from typing import Optional

_FAILURE = re.compile(r"^Failure # \d+ \(occurred at [^)]*\)$", re.M)
_WORKER_DIED = "The actor is dead because its worker process has died."
_NODE_DIED = "The actor died because its node has died."
_KILLED = "The actor is dead because it was killed by `ray.kill`."
_ACTOR_DIED = "The actor died unexpectedly before finishing this task."
# Ray's detail for a process that vanished without exiting (SIGKILL, a segfault, os._exit):
# its connection to the raylet ended, and Ray cannot tell which of these it was.
_VANISHED = "exits with a connection error code"
MAX_DETAIL = 120  # characters of Ray's own words kept where no case below fits


def last_failure(text: str) -> str:
    """The last failure of a Tune error file (the whole text when it has no ``Failure #`` header)."""
    starts = [m.end() for m in _FAILURE.finditer(text)]
    return text[starts[-1]:].strip() if starts else text.strip()


def _field(text: str, name: str) -> Optional[str]:
    """A ``\\t<name>: value`` line of Ray's paragraph (``pid``, ``class_name``)."""
    m = re.search(rf"^\s*{name}: (\S+)\s*$", text, re.M)
    return m.group(1) if m else None


def _rank(before: str) -> Optional[str]:
    """The Ray Train rank whose error holds a death told after ``before``: Ray Train's
    ``[Rank N Error Snippet]`` header, or ``worker N of the trial failed`` of
    ``detectors.train.distributed.WorkerFailed``, whichever comes last before it. (The WorkerFailed
    line names the lowest failed rank, which is often one that lost its peer, not the one that died.)"""
    heads = list(re.finditer(r"\[Rank (\d+) Error Snippet\]|worker (\d+) of the trial failed", before))
    return (heads[-1].group(1) or heads[-1].group(2)) if heads else None


def _sentence(text: str) -> str:
    first = re.split(r"(?<=\.)\s", text.strip(), maxsplit=1)[0].rstrip(".")
    return first if len(first) <= MAX_DETAIL else first[:MAX_DETAIL - 3] + "..."


def _worker_cause(detail: str, exit_type: str) -> str:
    """Why the worker process died, from Ray's ``Worker exit type`` and ``Worker exit detail``."""
    memory = re.search(r"was ([\d.]+GB) used / ([\d.]+GB) limit", detail)
    if exit_type == "NODE_OUT_OF_MEMORY" or memory:
        used = f" ({memory.group(1)} of {memory.group(2)})" if memory else ""
        return f"killed by Ray because its node was out of memory{used}"
    signal = re.search(r"receives a (SIG[A-Z0-9]+)", detail)
    if signal:
        return f"stopped by {signal.group(1)}"
    if _VANISHED in detail:
        return "killed (SIGKILL: kill -9 or the kernel's out-of-memory killer) or crashed"
    code = re.search(r"exit code (-?\d+)", detail)
    if code:
        return f"exited with code {code.group(1)}"
    return _sentence(detail) or exit_type or "died"


def death_reason(text: str) -> Optional[str]:
    """One line for a failure in which Ray lost the trial's worker process or node, e.g.
    ``its worker (pid 30391) died: killed (SIGKILL: ...) or crashed``; None for any other error.

    ``text``: a failure's text (:func:`last_failure`). A Ray Train worker of a multi-worker
    trial is named as such (``its training worker 1``, by rank); the trial's own process as ``its worker``."""
    found = [text.find(s) for s in (_WORKER_DIED, _NODE_DIED, _KILLED, _ACTOR_DIED) if s in text]
    if not found:
        return None
    at = min(found)  # the first death told; its actor's fields follow
    pid, cls = _field(text[at:], "pid"), _field(text[at:], "class_name") or ""
    rank = _rank(text[:at])
    if rank is not None:
        who = f"its training worker {rank}"
    else:
        who = "a training worker" if cls.startswith("RayTrainWorker") else "its worker"
    who += f" (pid {pid})" if pid else ""
    if _NODE_DIED in text:
        node = text.split(_NODE_DIED, 1)[1]
        why = re.search(r"the actor's node was terminated[^:]*:\s*(.*)", node)
        return f"its node died ({_sentence(why.group(1))})" if why and why.group(1).strip() else "its node died"
    if _KILLED in text:
        return f"{who} was killed with ray.kill"
    if _WORKER_DIED in text:
        after = text.split(_WORKER_DIED, 1)[1]
        exit_type = re.search(r"Worker exit type: (\w+)", after)
        detail = after.split("Worker exit detail:", 1)[1] if "Worker exit detail:" in after else ""
        return f"{who} died: {_worker_cause(detail, exit_type.group(1) if exit_type else '')}"
    return f"{who} died"


def short_error(text: str) -> str:
    """A trial's error in one line: :func:`death_reason` of its last failure, else that
    failure's last line (a traceback's ``SomeError: message``)."""
    failure = last_failure(text)
    reason = death_reason(failure)
    if reason:
        return reason
    lines = [ln.strip() for ln in failure.splitlines() if ln.strip()]
    return lines[-1] if lines else "trial failed (empty error file)"
