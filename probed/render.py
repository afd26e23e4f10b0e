"""Reply bodies for group verdicts: plain, kube-apiserver verbose, and JSON. Pure functions.

The verbose form is the one Kubernetes operators read every day from kube-apiserver:
`[+]name ok` / `[-]name failed: reason`, then `<path> check passed|failed`.
"""

import json
from typing import Any, Dict, List, Optional, Sequence

from .checkstate import CheckState
from .groups import GROUP_PATHS
from .pod import GroupVerdict
from .values import format_timestamp



def render_plain(verdict: GroupVerdict) -> bytes:
    """`ok` or `<path> failed: <reason>`, one line."""
    if verdict.ok:
        return b"ok\n"
    return ("%s failed: %s\n" % (GROUP_PATHS[verdict.group], verdict.reason)).encode("utf-8")


def render_verbose(verdict: GroupVerdict, excluded: Sequence[str] = ()) -> bytes:
    """kube-apiserver style: one `[+]`/`[-]` line per check, then the group's outcome. A passing
    line also says what was seen (`[+]vllm-queue ok: sum(...) = 3 <= max 32`), so a healthy pod
    reads at a glance."""
    lines: List[str] = []
    for st, ok, reason in verdict.checks:
        if ok:
            lines.append("[+]%s ok%s" % (st.check.name, ": " + reason if reason else ""))
        else:
            lines.append("[-]%s failed: %s" % (st.check.name, reason))
    for name in excluded:
        lines.append("[+]%s excluded: ok" % name)
    path = GROUP_PATHS[verdict.group]
    if verdict.ok:
        note = "" if not verdict.checks or verdict.reason in ("ok", "started") else (
            " (%s)" % verdict.reason)
        lines.append("%s check passed%s" % (path, note))
    else:
        lines.append("%s check failed: %s" % (path, verdict.reason))
    return ("\n".join(lines) + "\n").encode("utf-8")


def check_json(st: CheckState, ok: bool, reason: str, now: float) -> Dict[str, Any]:
    """One check as JSON: state, reason, value, latency, age, streak and since when."""
    obs = st.obs
    row: Dict[str, Any] = {
        "name": st.check.name,
        "kind": st.check.kind,
        "status": st.state_word() if ok == st.passing else ("pass" if ok else "fail"),
        "reason": reason,
        "value": obs.value if obs is not None else None,
        "latency_seconds": round(st.latency, 6) if obs is not None else None,
        "age_seconds": round(now - st.obs_at, 3) if obs is not None else None,
        "consecutive": st.streak,
        "since": format_timestamp(st.since_wall) if st.since_wall else None,
        "polls": st.polls,
    }
    if obs is not None and obs.detail:
        row["detail"] = obs.detail
    return row


def render_json(verdict: GroupVerdict, now: float, extra: Optional[Dict[str, Any]] = None,
                excluded: Sequence[str] = ()) -> bytes:
    """The group and every check as one JSON object (`?format=json`)."""
    doc: Dict[str, Any] = {
        "group": verdict.group,
        "status": "pass" if verdict.ok else "fail",
        "reason": verdict.reason,
    }
    if extra:
        doc.update(extra)
    doc["checks"] = [check_json(st, ok, reason, now) for st, ok, reason in verdict.checks]
    if excluded:
        doc["excluded"] = list(excluded)
    return (json.dumps(doc, indent=1, sort_keys=False) + "\n").encode("utf-8")
