#!/usr/bin/env python3
"""queue_client.py: the docs' client, in Python, with queue_client's command line: puts tasks
0..N-1, checks the N results ([n, n*n], every n once), then puts K stop tasks and asks the server
to shut down. Exits 1 if a result is wrong.

    queue_client.py --address 127.0.0.1:PORT --authkey 736563726574 --tasks 1000 --stop-workers 4
"""
import time

from queue_common import arguments, manager

args = arguments('--tasks', '--stop-workers')
m = manager(args)
tasks, results = m.get_task_queue(), m.get_result_queue()
start = time.monotonic()
for i in range(args.tasks):
    tasks.put(i)
seen, bad = set(), 0
for _ in range(args.tasks):
    r = results.get(timeout=60)
    if len(r) != 2 or r[1] != r[0] * r[0] or r[0] in seen or not 0 <= r[0] < args.tasks:
        bad += 1
    else:
        seen.add(r[0])
secs = time.monotonic() - start
for _ in range(args.stop_workers):
    tasks.put(-1)
for _ in range(10000):   # the workers take their stop tasks (10 s at most)
    if args.stop_workers == 0 or tasks.empty():
        break
    time.sleep(0.001)
print(f'{args.tasks} tasks, {args.tasks - bad} results right, {bad} wrong, in {secs:.3f} s '
      f'({int(args.tasks / secs) if secs > 0 else 0} tasks/s)', flush=True)
# Python's connect()ed manager has no shutdown(); the server's function is called as its own
# manager would.
from multiprocessing.managers import dispatch
conn = m._Client(m._address, authkey=m._authkey)
try:
    dispatch(conn, None, 'shutdown')
finally:
    conn.close()
raise SystemExit(1 if bad else 0)
