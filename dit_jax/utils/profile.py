"""Where a step's time goes: op durations from a `jax.profiler` trace, summed per step by kind of op."""

import collections
import glob
import gzip
import json
import os
import re

# Not ops: Python frames ($...), runtime internals (Class::method), dispatch and the ends of async ops.
NOT_AN_OP = re.compile(r"^\$|^end: |::|^PjitFunction|^ParseArguments$")
IDLE = "(no op running)"


def op_seconds(trace_dir, steps):
    """{op kind: seconds per step} from the newest Perfetto trace that jax.profiler.trace wrote under trace_dir.

    Numbered instances of a kind (fusion.12, fusion.13) are pooled, so one table row is one kind of work.
    IDLE holds the time between the first op and the last when no thread ran one (see idle_time).
    """
    pattern = os.path.join(trace_dir, "plugins", "profile", "*", "perfetto_trace.json.gz")
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"No {pattern}: trace with jax.profiler.trace(..., create_perfetto_trace=True).")
    with gzip.open(paths[-1]) as f:
        trace = json.load(f)
    totals, spans = collections.Counter(), []
    for event in trace["traceEvents"] if isinstance(trace, dict) else trace:
        if event.get("ph") == "X" and not NOT_AN_OP.search(event["name"]):
            totals[re.sub(r"\.\d+$", "", event["name"])] += event.get("dur", 0) / 1e6 / steps
            start = event.get("ts", 0)
            spans.append((start, start + event.get("dur", 0)))
    if spans:
        totals[IDLE] = idle_time(spans) / 1e6 / steps
    return totals


def idle_time(spans):
    """Time inside the extent of (start, end) spans, at least one, that no span covers.

    On CPU this is mostly XLA's executor waiting on asynchronous work: an Eigen
    dot's trace event ends when it is dispatched, not when it finishes, so its
    time shows here rather than under `dot`. Host overhead between steps too.
    """
    spans = sorted(spans)
    idle, covered_to = 0, spans[0][0]
    for start, end in spans:
        idle += max(0, start - covered_to)
        covered_to = max(covered_to, end)
    return idle


def report(totals, step_seconds, top=12):
    """The `top` kinds as lines: seconds per step, share of the step, name; then what the rest add up to."""
    shown = totals.most_common(top)
    lines = [f"  {seconds:8.4f} s  {seconds / step_seconds:6.1%}  {name}" for name, seconds in shown]
    rest = sum(totals.values()) - sum(seconds for _, seconds in shown)
    lines.append(f"  {rest:8.4f} s  {rest / step_seconds:6.1%}  ({max(0, len(totals) - top)} other kinds)")
    return "\n".join(lines)
