"""What a Python program does with troupe's shared memory: attach to a troupe SharedMemory or
ShareableList by name and read and write it, or create one for troupe to attach to.

  py_shm.py check-shm NAME        print the first 8 bytes (hex), write b'python' at 8
  py_shm.py create-shm            create 4096 bytes with b'ping' at 0, print the name, wait for
                                  b'pong' at 4 (20 s), unlink
  py_shm.py check-list NAME       print the list and its format, write new values, print again
  py_shm.py create-list           create a list, print the name, wait until item 6 is 0 (20 s),
                                  print the list and its format, unlink

A process that only attaches unregisters the segment from Python's resource tracker, which
would otherwise unlink it when this process ends (bpo-38119).
"""
import sys
import time
from multiprocessing import resource_tracker, shared_memory


def untrack(shm):
    resource_tracker.unregister(shm._name, "shared_memory")


def wait_for(done):
    end = time.monotonic() + 20
    while not done():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


def main():
    cmd = sys.argv[1]
    if cmd == "check-shm":
        shm = shared_memory.SharedMemory(sys.argv[2])
        untrack(shm)
        print(shm.size, bytes(shm.buf[:8]).hex(), flush=True)
        shm.buf[8:14] = b"python"
        shm.close()
    elif cmd == "create-shm":
        shm = shared_memory.SharedMemory(create=True, size=4096)
        shm.buf[:4] = b"ping"
        print(shm.name, flush=True)
        ok = wait_for(lambda: bytes(shm.buf[4:8]) == b"pong")
        print("ok" if ok else "timeout", flush=True)
        shm.close()
        shm.unlink()
        sys.exit(0 if ok else 3)
    elif cmd == "check-list":
        sl = shared_memory.ShareableList(name=sys.argv[2])
        untrack(sl.shm)
        print(repr(list(sl)), flush=True)
        print(sl.format, flush=True)
        sl[0] = "py"
        sl[1] = 1e100
        sl[2] = None
        sl[3] = False
        sl[4] = "ünï"
        sl[5] = b"\xff" * 8
        sl[6] = 2**62
        sl[7] = "tiny"
        print(repr(list(sl)), flush=True)
        sl.shm.close()
    elif cmd == "create-list":
        sl = shared_memory.ShareableList([1, 2.0, "three", b"four", None, True, -(2**63)])
        print(sl.shm.name, flush=True)
        # Item 6 keeps its format when troupe writes it last: reading it does not race with
        # troupe's writes of the other items (a ShareableList has no lock).
        ok = wait_for(lambda: sl[6] == 0)
        print(repr(list(sl)), flush=True)
        print(sl.format, flush=True)
        sl.shm.close()
        sl.shm.unlink()
        sys.exit(0 if ok else 3)
    else:
        sys.exit("unknown command " + cmd)


main()
