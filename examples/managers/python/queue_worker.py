#!/usr/bin/env python3
"""queue_worker.py: the docs' worker, in Python, with queue_worker's command line. It takes tasks
n from the task queue until a negative one (or the server goes), and puts [n, n*n] on the result
queue for each. It works against a troupe queue_server (which speaks CPython's manager dialect,
doc/interop.md) as against a Python one.

    queue_worker.py --address 127.0.0.1:PORT --authkey 736563726574
"""
import sys

from queue_common import arguments, manager

m = manager(arguments())
tasks, results = m.get_task_queue(), m.get_result_queue()
done = 0
while True:
    try:
        n = tasks.get()
    except (EOFError, ConnectionError) as e:
        print(f'worker: the server has gone ({e!r}); stopping', file=sys.stderr)
        break
    if n < 0:
        break
    results.put([n, n * n])
    done += 1
print(f'worker: {done} tasks done', flush=True)
