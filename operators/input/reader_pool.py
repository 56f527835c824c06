"""Reader processes that contain what a decoder does to them.

Native decoders fed damaged files do not always raise: GDCM throws C++ exceptions through C and
aborts the process, others crash or loop, and the kernel's OOM killer ends a process that asks
for too much. With :class:`concurrent.futures.ProcessPoolExecutor` one such file breaks the
whole pool (``BrokenProcessPool``) and with it the run. Here each reader holds one task (a few
files) at a time, so the parent always knows what a reader held when it died or overran:

- a reader that dies costs only what it held: a task of several files is retried one file per
  task, and the file that kills its reader again is ``failed`` with the reason (which signal);
  a task of several files that raises is retried the same way;
- a task that overruns its time limit (per file) is killed the same way, and its file ``failed``
  with the limit in the reason;
- the dead or killed reader is replaced and the run goes on.

Results come back in submission order, with at most ``read_ahead`` tasks in flight or waiting to
be yielded, so memory stays bounded however many files there are; a thread keeps the readers
working through that window while the caller is busy.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from typing import Any, Callable, Generic, Iterable, Iterator, Sequence, TypeVar

log = logging.getLogger("bodypart")

T = TypeVar("T")  # one item of a task (a file)
R = TypeVar("R")  # what a task returns

#: A reader that dies this many times in a row before it takes any task cannot start at all.
MAX_START_FAILURES = 3
#: The driver thread looks at least this often whether it was asked to stop.
POLL_SECONDS = 0.5
#: Tasks sent to a reader at once: the one it decodes and the next.
TASKS_PER_READER = 2


class ReaderStartError(RuntimeError):
    """Reader processes die before they can take any work (the run cannot go on)."""


@dataclass
class _Task(Generic[T]):
    items: list[T]
    result: Any = None
    done: bool = False
    worker: "_Reader | None" = None
    deadline: float = 0.0


@dataclass
class _Reader:
    process: Any
    conn: Connection
    ready: bool = False
    #: Tasks sent, in order; the first is the one it works on (the next waits in its pipe, so the
    #: reader never idles between tasks).
    tasks: deque = field(default_factory=deque, repr=False)

    @property
    def task(self) -> "_Task | None":
        return self.tasks[0] if self.tasks else None


def _reader_main(conn: Connection, initializer: Callable | None, initargs: tuple) -> None:
    """A reader's life: initialise, say ready, then run one task at a time until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when readers stop
    if initializer is not None:
        initializer(*initargs)
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        fn, args = message
        try:
            conn.send(("ok", fn(*args)))
        except BaseException as e:  # noqa: BLE001 - the parent turns it into per-file reasons
            conn.send(("error", f"{type(e).__name__}: {e}"))


class ReaderPool(Generic[T, R]):
    """Run ``fn(items, *args)`` on tasks in reader processes; see the module docstring.

    Parameters
    ----------
    workers
        Reader processes (at least 1).
    fn
        Picklable function of a task's items (and ``args``) returning ``R``.
    failed
        ``failed(items, reason)``: the result standing for a task whose reader died, overran or
        raised; called with one item when the pool could tell which one.
    context
        The multiprocessing context (:func:`operators.input.processes.worker_context`).
    seconds_per_item
        Time limit of a task per item it holds; ``None``: no limit.
    """

    def __init__(self, workers: int, fn: Callable[..., R], failed: Callable[[list[T], str], R], context: BaseContext,
                 args: tuple = (), initializer: Callable | None = None, initargs: tuple = (),
                 seconds_per_item: float | None = None):
        if workers < 1:
            raise ValueError("a reader pool needs at least one reader")
        self.fn, self.args, self.failed = fn, args, failed
        self.context, self.initializer, self.initargs = context, initializer, initargs
        self.seconds_per_item = seconds_per_item
        self.readers: list[_Reader] = []
        self.replaced = 0  # readers that died or were killed and were started anew
        self._start_failures = 0
        for _ in range(workers):
            self._start_reader()

    # -- the public loop ---------------------------------------------------------------------

    def imap(self, tasks: Iterable[Sequence[T]], read_ahead: int) -> Iterator[R]:
        """Results of ``tasks`` in order; at most ``read_ahead`` tasks submitted and not yet yielded.

        A thread keeps the readers busy while the caller works on earlier results (the networks
        run between two batches), within the ``read_ahead`` window.
        """
        driver = _Driver(self, iter(tasks), max(read_ahead, 1))
        driver.start()
        try:
            while (task := driver.next_done()) is not None:
                yield task.result
        finally:
            driver.stop()

    def close(self) -> None:
        """Stop every reader (politely, then by force)."""
        for r in self.readers:
            try:
                r.conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 5
        for r in self.readers:
            r.process.join(max(0.0, deadline - time.monotonic()))
            if r.process.is_alive():
                r.process.kill()
                r.process.join()
            r.conn.close()
        self.readers = []

    def __enter__(self) -> "ReaderPool[T, R]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _start_reader(self) -> _Reader:
        parent, child = self.context.Pipe()
        process = self.context.Process(target=_reader_main, args=(child, self.initializer, self.initargs), daemon=True)
        process.start()
        child.close()
        reader = _Reader(process, parent)
        self.readers.append(reader)
        return reader

    def _dispatch(self, queue: deque[_Task]) -> None:
        for task in queue:
            if task.done or task.worker is not None:
                continue
            free = [r for r in self.readers if r.ready and len(r.tasks) < TASKS_PER_READER]
            if not free:
                return
            reader = min(free, key=lambda r: len(r.tasks))  # an idle reader first
            task.worker = reader
            reader.tasks.append(task)
            task.deadline = float("inf")
            if len(reader.tasks) == 1:
                self._start_clock(task)
            try:
                reader.conn.send((self.fn, (task.items, *self.args)))
            except (OSError, ValueError):  # died between tasks: noticed in _collect
                pass

    def _start_clock(self, task: _Task) -> None:
        """The time limit runs from when the reader starts on the task (it was waiting before)."""
        limit = self.seconds_per_item * len(task.items) if self.seconds_per_item else None
        task.deadline = time.monotonic() + limit if limit else float("inf")

    def _collect(self, queue: deque[_Task], lock: threading.Condition) -> None:
        """Wait (at most ``POLL_SECONDS``, without ``lock``) for one event -- a result, a reader's
        death, a deadline -- then handle every one that is ready, holding ``lock``."""
        with lock:
            busy = [r for r in self.readers if r.task is not None or not r.ready]
            deadline = min((r.task.deadline for r in busy if r.task is not None), default=float("inf"))
            waitables = [r.conn for r in busy] + [r.process.sentinel for r in busy]
        if waitables:
            wait(waitables, max(0.0, min(deadline - time.monotonic(), POLL_SECONDS)))
        with lock:
            self._handle_events(queue)

    def _handle_events(self, queue: deque[_Task]) -> None:
        now = time.monotonic()
        for reader in list(self.readers):
            if reader.conn.poll() if not reader.conn.closed else False:
                try:
                    kind, payload = reader.conn.recv()
                except (EOFError, OSError):
                    self._lost(reader, queue, self._death_reason(reader))
                    continue
                if kind == "ready":
                    reader.ready = True
                    self._start_failures = 0
                elif kind == "error" and reader.task is not None and len(reader.task.items) > 1:
                    self._split(reader.tasks.popleft(), queue)  # which file raised? each alone, like a death
                    if reader.task is not None:
                        self._start_clock(reader.task)
                else:
                    self._finish(reader, payload if kind == "ok" else None, None if kind == "ok" else f"reader error: {payload}")
            elif not reader.process.is_alive():
                self._lost(reader, queue, self._death_reason(reader))
            elif reader.task is not None and now >= reader.task.deadline:
                seconds = self.seconds_per_item
                reader.process.kill()
                reader.process.join()
                self._lost(reader, queue, f"decoding took longer than {seconds:g} s per file (time limit); reader stopped")

    def _finish(self, reader: _Reader, result: Any, error: str | None) -> None:
        if not reader.tasks:
            return
        task = reader.tasks.popleft()
        if reader.task is not None:
            self._start_clock(reader.task)
        task.worker = None
        task.result = result if error is None else self.failed(task.items, error)
        task.done = True

    def _lost(self, reader: _Reader, queue: deque[_Task], reason: str) -> None:
        """A reader died or was killed: replace it; fail or split the task it held."""
        task = reader.tasks.popleft() if reader.tasks else None
        for waiting in reader.tasks:  # sent but not started: they go to another reader as they are
            waiting.worker, waiting.deadline = None, float("inf")
        reader.tasks.clear()
        self.readers.remove(reader)
        reader.conn.close()
        reader.process.join(1)
        if not reader.ready:
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                raise ReaderStartError(f"reader processes die before taking any work ({reason})")
        log.warning("%s; starting a new reader", reason)
        self.replaced += 1
        self._start_reader()
        if task is None:
            return
        task.worker = None
        if len(task.items) == 1:
            task.result, task.done = self.failed(task.items, reason), True
            return
        self._split(task, queue)

    @staticmethod
    def _split(task: _Task, queue: deque[_Task]) -> None:
        """Several files and one of them killed or failed the task: retry each alone, in place
        (order kept), so only that one is lost."""
        task.worker = None
        at = queue.index(task)
        queue.remove(task)
        for k, item in enumerate(task.items):
            queue.insert(at + k, _Task([item]))

    @staticmethod
    def _death_reason(reader: _Reader) -> str:
        reader.process.join(1)
        code = reader.process.exitcode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            why = {"SIGKILL": "killed, often by the out-of-memory killer", "SIGSEGV": "a decoder crashed",
                   "SIGABRT": "a decoder aborted", "SIGBUS": "a decoder crashed"}.get(name, "killed")
            return f"reader process died while decoding ({name}: {why})"
        return f"reader process died while decoding (exit code {code})"


class _Driver(threading.Thread):
    """Feeds a pool's readers from ``source`` and collects their results into an ordered window,
    in the background; the caller takes finished tasks from the front (:meth:`next_done`)."""

    def __init__(self, pool: ReaderPool, source: Iterator[Sequence[Any]], window: int):
        super().__init__(name="reader-pool", daemon=True)
        self.pool, self.source, self.window = pool, source, window
        self.queue: deque[_Task] = deque()
        self.cond = threading.Condition()
        self.exhausted = self.finished = self.stopping = False
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while True:
                with self.cond:
                    if self.stopping:
                        return
                    while not self.exhausted and len(self.queue) < self.window:
                        items = next(self.source, None)
                        if items is None:
                            self.exhausted = True
                        else:
                            self.queue.append(_Task(list(items)))
                    if self.exhausted and all(t.done for t in self.queue):
                        self.finished = True
                        self.cond.notify_all()
                        return
                    self.pool._dispatch(self.queue)
                    if not any(r.task is not None or not r.ready for r in self.pool.readers):
                        self.cond.wait(POLL_SECONDS)  # the window is full of results: wait for the caller
                        continue
                self.pool._collect(self.queue, self.cond)
                with self.cond:
                    self.cond.notify_all()
        except BaseException as e:  # noqa: BLE001 - the caller raises it (readers that cannot start, a vanished folder)
            with self.cond:
                self.error = e
                self.cond.notify_all()

    def next_done(self) -> _Task | None:
        """The next task in order once it is done; ``None`` after the last."""
        with self.cond:
            while True:
                if self.queue and self.queue[0].done:
                    task = self.queue.popleft()
                    self.cond.notify_all()
                    return task
                if self.error is not None:
                    raise self.error
                if self.finished and not self.queue:
                    return None
                self.cond.wait()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self.is_alive() and self is not threading.current_thread():
            self.join()
