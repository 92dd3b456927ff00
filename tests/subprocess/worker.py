"""A worker for the subprocess transport's tests: reads one JSON line per message on stdin, answers
on stdout with a JSON line carrying the same id.

By payload: "reject" -> a final error; "busy" -> a retryable error; "reject-long" -> a final error of
two lines, the second 100 000 bytes long; "silent" -> no answer;
"stderr-long" / "stderr-bytes" -> first a line of 5000 bytes / one that is not UTF-8 on stderr;
"not-utf8" -> an answer line that is not UTF-8; "grow:N" -> a reply of N control characters (each
written as 6 bytes of JSON, \\u0001); "env:NAME" -> a reply whose payload is the value of its
environment variable NAME, or "(unset)";
anything else -> a reply whose payload is the upper-cased payload, with header x-pid.
With EXIT_AFTER=N in the environment, the process exits (status 3) on reading its Nth message,
without answering it. With LEAVE_CHILD=1, it first starts a process of its own (`sleep 60`) that
keeps its standard input and output open after it exits (`sleep N` with CHILD_SECONDS=N; with
CHILD_PIDS=FILE, it appends "PID CHILD_PID" to FILE). With SLOW_MS=N, it takes N ms over each message before it answers. With
START_MS=N, it waits N ms before it reads anything (an interpreter slow to start). With WEDGE_AFTER=N,
it reads nothing more once it answered its Nth message, and lives on (a process wedged). With
MUTE_AFTER=N, it reads every message after its Nth and answers none (a handler stuck, its input still
read). A line that is not JSON ends it (a traceback, status 1).
"""
import json
import os
import subprocess
import sys
import time

exit_after = int(os.environ.get("EXIT_AFTER", "0"))
slow_ms = int(os.environ.get("SLOW_MS", "0"))
wedge_after = int(os.environ.get("WEDGE_AFTER", "0"))
mute_after = int(os.environ.get("MUTE_AFTER", "0"))
seen = 0
if os.environ.get("LEAVE_CHILD"):
    child = subprocess.Popen(["sleep", os.environ.get("CHILD_SECONDS", "60")])
    if os.environ.get("CHILD_PIDS"):
        with open(os.environ["CHILD_PIDS"], "a") as pids:
            print(os.getpid(), child.pid, file=pids)
time.sleep(int(os.environ.get("START_MS", "0")) / 1000)
for line in sys.stdin:
    message = json.loads(line)
    seen += 1
    print(f"worker {os.getpid()} got {message['id']}", file=sys.stderr, flush=True)
    if exit_after and seen >= exit_after:
        sys.exit(3)
    time.sleep(slow_ms / 1000)
    payload = message["payload"]
    if payload == "stderr-long":
        print("x" * 5000, file=sys.stderr, flush=True)
    elif payload == "stderr-bytes":
        sys.stderr.buffer.write(b"\xff\n")
        sys.stderr.buffer.flush()
    if payload == "silent" or (mute_after and seen > mute_after):
        continue
    if payload == "not-utf8":
        sys.stdout.buffer.write(b'{"id": %d, "payload": "\xff"}\n' % message["id"])
        sys.stdout.buffer.flush()
        continue
    if payload == "reject":
        answer = {"id": message["id"], "error": "rejected by the worker"}
    elif payload == "reject-long":
        answer = {"id": message["id"], "error": "rejected\nERROR forged " + "x" * 100_000}
    elif payload == "busy":
        answer = {"id": message["id"], "error": "busy", "retryable": True}
    elif payload.startswith("env:"):
        answer = {"id": message["id"], "payload": os.environ.get(payload[4:], "(unset)")}
    elif payload.startswith("grow:"):
        answer = {"id": message["id"], "payload": "\x01" * int(payload[5:])}
    else:
        answer = {"id": message["id"], "payload": payload.upper(), "headers": [["x-pid", str(os.getpid())]]}
    print(json.dumps(answer), flush=True)
    if wedge_after and seen >= wedge_after:
        time.sleep(3600)
