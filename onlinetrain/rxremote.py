"""The trainer's side of the receiving process: the Receiver's interface, fed from another process.

`RemoteReceiver` starts `python -m onlinetrain.rxproc` (its own process group) which owns the
channel, and runs one feeder thread here that moves the rows it sends (a private shm ring, frames
of the documented format; message layout in rxproc.py) into the training buffer, keeps the
validation set and mirrors the accounting. Per batch of up to 256 frames the training process
does one ring read and one `put_many`, instead of decoding, assembling and adapting each frame
under its GIL (docs/receiver.md: why, and what was measured).

    rx = RemoteReceiver(cfg, "shm://demo", buf, rank=0)
    rx.start()                         # the process and the feeder thread
    rx.samples, rx.sims_done, rx.val_arrays(), rx.error     # as Receiver's
    rx.pause(); state = rx.state_dict(); rx.resume()        # a consistent checkpoint section
    rx.stop_event.set(); rx.join(); rx.close()

Consistency: `pause()` asks the process for its state; the process writes it under its lock and
sends it after every row it accounted for, and the feeder, having put those rows into the buffer
(or, while the buffer is full, into its backlog), parks until `resume()`. The checkpoint's
receiver section is the process's state with this side's validation rows and backlog.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from . import frame as fr
from . import procs
from .errors import OTError
from .receiver import Receiver, _t, fully_received
from .rxproc import END, META, ROWS, STATE, VAL, unpack_rows
from .shm_consumer import RingConsumer
from .shm_segment import Empty, clean_stale

log = logging.getLogger(__name__)
STATE_TIMEOUT_S = 120.0  # a checkpoint waits this long for the receiving process's state
FINAL_TIMEOUT_S = 60.0  # a stop waits this long for its final state
IDLE_S = 0.01  # the feeder's poll period when nothing is waiting (each message holds ~256 rows)


class ReceiverProcessError(OTError, RuntimeError):
    def __init__(self, message: str, value=None):
        super().__init__(message)
        self.value = value


class _StatsProxy:
    """`rx.stats` for the trainer and checkpoint code: the statistics live in the process."""

    def __init__(self, rx):
        self.rx, self.restore = rx, None

    @property
    def counts(self) -> dict:
        return dict((self.rx._state or {}).get("stats_counts") or {})

    def state_dict(self) -> dict:
        return (self.rx._state or {}).get("stats_state") or {}

    def load_state_dict(self, d: dict) -> None:
        self.restore = d  # handed to the process at start

    def save(self, path) -> None:
        src = os.path.join(self.rx.cfg.output.dir, "stats.npz")  # written by the process
        if os.path.abspath(str(path)) != os.path.abspath(src) and os.path.exists(src):
            shutil.copyfile(src, path)


class RemoteReceiver:
    """Receiver's interface (receiver.py) over a receiving process; see the module doc."""

    where = "process"  # the summary's "receiver"

    def __init__(self, cfg, url: str, buffer, *, rank: int = 0, expected_sims: int | None = None,
                 study_dir=None):
        from .stats import stats_wanted  # noqa: PLC0415
        self.cfg, self.url, self.buffer, self.rank = cfg, url, buffer, rank
        self.expected_sims, self.study_dir = expected_sims, study_dir
        self.lock = threading.RLock()
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.frames = self.samples = self.rejected = self.duplicates = 0
        self.stream_ends = self.y_count = self.abandoned = 0
        self.y_sum = None
        self.sims_done: set[int] = set()
        self.sims_failed: dict[int, str] = {}
        self.sims_incomplete: set[int] = set()
        self._val: list = []  # (x, y, keys) blocks; snapshot cached until it grows
        self._vn, self._vsnap = 0, None
        self._backlog: list = []  # (x, y, keys) sent but not yet in the buffer (it was full)
        self._end_pending = self._ended = self._final = False
        self._state: dict | None = None
        self._state_seq, self._seq = 0, 0
        self._cond = threading.Condition()
        self._sync = threading.Event()  # a state request is pending: the feeder must not block
        self._resume = threading.Event()
        self._resume.set()
        self._restore: dict | None = None
        self._stopped_sent = False
        self.stats = _StatsProxy(self) if stats_wanted(cfg) else None
        from .imports import import_function  # noqa: PLC0415
        self.adapter = import_function(cfg.model.adapter, "model.adapter")  # valfields' shape
        self.proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        base = f"{cfg.output.name}-rx"
        clean_stale(base)  # rings of trainers that died
        self.ring_name = f"{base}{rank}-{os.getpid()}"
        self.ring = RingConsumer.create(self.ring_name, capacity=max(8, cfg.channel.ring_mb) << 20)
        self.dir = tempfile.mkdtemp(prefix="ot-rx-")

    # --- what the loop reads (as Receiver's) -------------------------------------------------
    @property
    def ident(self):
        return None if self._thread is None else self._thread.ident

    @property
    def stream_ended(self) -> bool:
        return self._ended

    def val_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with self.lock:
            if self._vsnap is None or len(self._vsnap[2]) != self._vn:
                if self._val:
                    self._vsnap = tuple(np.concatenate([b[i] for b in self._val]) for i in range(3))
                else:
                    self._vsnap = (np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32),
                                   np.zeros((0, 2), np.int64))
            return self._vsnap

    val = Receiver.val  # the same snapshot dict, from this class's val_arrays()

    # --- start, stop -------------------------------------------------------------------------
    def start(self) -> None:
        import torch  # noqa: PLC0415
        cfg_path = os.path.join(self.dir, "config.json")
        with open(cfg_path, "w") as fh:
            json.dump({"config": self.cfg.to_dict(),
                       "given": sorted(getattr(self.cfg, "given", ()))}, fh)
        argv = [sys.executable, "-m", "onlinetrain.rxproc", "--config", cfg_path, "--url",
                self.url, "--ring", self.ring_name, "--dir", self.dir, "--rank", str(self.rank),
                "--log-level", logging.getLevelName(logging.getLogger().getEffectiveLevel()),
                "--parent", str(os.getpid())]
        if self.expected_sims is not None:
            argv += ["--expected", str(self.expected_sims)]
        if self.study_dir is not None:
            argv += ["--study", str(self.study_dir)]
        if self._restore is not None:
            if self.stats is not None and self.stats.restore is not None:
                self._restore["stats_state"] = self.stats.restore
            path = os.path.join(self.dir, "resume.pt")
            torch.save(self._restore, path)
            argv += ["--resume", path]
        env = dict(os.environ)  # the same modules as this process (adapters found on sys.path)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        self.proc = procs.spawn(argv, env=env, stdin=subprocess.PIPE, text=True)
        self._thread = threading.Thread(target=self._feed, name="ot-rx-feeder", daemon=True)
        self._thread.start()

    def _send(self, msg: dict) -> bool:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):  # it has exited: its final state says why
            return False

    def join(self, timeout: float | None = None) -> None:
        """Stop the process if stop_event is set; wait for its final state (up to
        FINAL_TIMEOUT_S: it finishes the batch in hand and writes its state first)."""
        if self._thread is None:
            return
        if self.stop_event.is_set() and not self._stopped_sent:
            self._stopped_sent = True
            self._send({"cmd": "stop"})
        self._resume.set()
        self._thread.join(max(timeout or 0, FINAL_TIMEOUT_S))
        if self._thread.is_alive():
            log.error("receiving process pid %d gave no final state in %.0f s: stopping it",
                      self.proc.pid, FINAL_TIMEOUT_S)
            procs.terminate(self.proc)
            self._thread.join(5)

    def close(self) -> None:
        """Stop the process (TERM, grace, KILL), unlink the private ring, remove the temp dir."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.stop_event.set()
                self.join()
                procs.terminate(self.proc, grace=2.0)
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        self.ring.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.url.startswith("shm://"):  # the channel of a process that was killed
            clean_stale(self.url[len("shm://"):])

    # --- checkpoint section ------------------------------------------------------------------
    def pause(self) -> None:
        """Bring this side to the process's state as of now (see the module doc)."""
        if self._thread is None:
            return
        with self._cond:
            if self._final:
                return
            self._seq += 1
            seq = self._seq
            self._resume.clear()
            self._sync.set()
        self._send({"cmd": "state", "seq": seq})
        deadline = time.monotonic() + STATE_TIMEOUT_S
        with self._cond:
            while self._state_seq != seq and not self._final and self._thread.is_alive():
                if time.monotonic() > deadline:
                    self.resume()
                    raise ReceiverProcessError(f"the receiving process gave no state in "
                                               f"{STATE_TIMEOUT_S:.0f} s", seq)
                self._cond.wait(0.1)
        if self._state is None:
            raise ReceiverProcessError(f"the receiving process ended without a state: "
                                       f"{self.error}", seq)

    def resume(self) -> None:
        self._sync.clear()
        self._resume.set()

    def state_dict(self) -> dict:
        """The receiver section as of the last pause() (or the process's end)."""
        with self.lock:
            if self._state is None:
                raise ReceiverProcessError("no receiver state yet: call pause() first", None)
            d = {k: v for k, v in self._state.items() if not k.startswith("stats_")}
            x, y, k = self.val_arrays()
            d.update({"val_x": _t(x), "val_y": _t(y), "val_keys": _t(k)})
            parts = [tuple(np.asarray(a) for a in b) for b in self._backlog]
            if d.get("backlog") is not None:  # the process's rows after ours
                parts.append(tuple(t.numpy() for t in d["backlog"]))
            if parts:
                d["backlog"] = [_t(np.concatenate([p[i] for p in parts])) for i in range(3)]
            else:
                d.pop("backlog", None)
            return d

    def load_state_dict(self, d: dict) -> None:
        """A checkpoint's receiver section, before start(): the process continues from it."""
        with self.lock:
            self._restore = dict(d)  # the validation rows stay here: the process sends none
            self._restore.update({"val_x": _t(np.zeros((0, 0), np.float32)),
                                  "val_y": _t(np.zeros((0, 0), np.float32)),
                                  "val_keys": _t(np.zeros((0, 2), np.int64))})
            self.frames, self.samples, self.rejected = \
                int(d["frames"]), int(d["samples"]), int(d["rejected"])
            x, y, k = (d[n].numpy().copy() for n in ("val_x", "val_y", "val_keys"))
            self._val = [(x, y, k.reshape(-1, 2))] if len(k) else []
            self._vn, self._vsnap = len(k), None
            self.sims_done = fully_received(d)
            self.y_count = int(d["y_count"])
            self.y_sum = None if d["y_sum"] is None else d["y_sum"].numpy().copy()

    # --- the feeder thread -------------------------------------------------------------------
    def _feed(self) -> None:
        try:
            while not self._final:
                try:  # no spinning here: the GIL belongs to the training loop
                    frames = self.ring.get_many(64, timeout=0)
                except Empty:
                    if self.proc.poll() is None:
                        time.sleep(IDLE_S)
                        continue
                    try:  # what it sent before it exited
                        frames = self.ring.get_many(64, timeout=0.2)
                    except Empty:
                        raise ReceiverProcessError(
                            f"the receiving process (pid {self.proc.pid}) exited "
                            f"({procs.describe_exit(self.proc.returncode)}) without its "
                            f"final state; its log is above", self.proc.returncode) from None
                for f in frames:
                    self._apply(f)
                self._settle()
                if len(frames) < 8 and not self._final and not self._sync.is_set():
                    time.sleep(IDLE_S)  # a trickle: let rows gather (the GIL stays free)
        except BaseException as e:  # noqa: BLE001 - surfaced by the training loop
            self.error = self.error or e
        finally:
            if self._backlog and not self._final:
                log.warning("receiving process: %d rows were not put in the buffer",
                            sum(len(b[2]) for b in self._backlog))
            self.buffer.end_stream()
            self._ended = True
            with self._cond:
                self._final = True
                self._cond.notify_all()

    def _settle(self) -> None:
        """Put the backlog in (waiting for room, backpressure) unless a checkpoint or a stop
        is pending; then end the buffer's stream if its end came."""
        while self._backlog and not self._sync.is_set() and not self.stop_event.is_set():
            with self.lock:
                self._put_backlog(0.05)
        if self._end_pending and (not self._backlog or self.stop_event.is_set()):
            self._end_pending = False
            self.buffer.end_stream()
            self._ended = True

    def _put_backlog(self, timeout: float) -> None:
        while self._backlog:
            x, y, k = self._backlog[0]
            i = self.buffer.put_many(x, y, k, timeout=timeout)
            if i < len(k):
                self._backlog[0] = (x[i:], y[i:], k[i:])
                return
            self._backlog.pop(0)

    def _apply(self, f: fr.Frame) -> None:
        name = f.name
        if name == ROWS:
            x, y, k = unpack_rows(f)
            with self.lock:
                self._backlog.append((x, y, k))
                self._put_backlog(0)
        elif name == VAL:
            x, y, k = unpack_rows(f)
            with self.lock:
                self._val.append((x.copy(), y.copy(), k))
                self._vn += len(k)
        elif name == META:
            self._meta(json.loads(f.meta), f.array)
        elif name == END:
            self._end_pending = True
        elif name == STATE:
            self._got_state(json.loads(f.meta))
        else:
            raise ReceiverProcessError(f"unknown message {name!r} from the receiving process", name)

    def _meta(self, c: dict, ids: np.ndarray) -> None:
        ids = ids.tolist()
        nd, nf, ni = c["new_done"], c["failed"], c["incomplete"]
        with self.lock:
            for k in ("frames", "samples", "rejected", "duplicates", "stream_ends", "y_count",
                      "abandoned"):
                setattr(self, k, int(c[k]))
            self.sims_done.update(ids[:nd])
            if nf >= 0:  # reasons come with the final state
                self.sims_failed = {i: self.sims_failed.get(i, "failed") for i in ids[nd:nd + nf]}
            if ni >= 0:
                self.sims_incomplete = set(ids[nd + max(nf, 0):nd + max(nf, 0) + ni])

    def _got_state(self, m: dict) -> None:
        import torch  # noqa: PLC0415
        d = None
        if m.get("path"):
            d = torch.load(m["path"], map_location="cpu", weights_only=True)
            os.unlink(m["path"])
        if m.get("error"):
            self.error = self.error or ReceiverProcessError(f"receiving process: {m['error']}",
                                                            m["error"])
        with self._cond:
            if d is not None:
                with self.lock:
                    self._state = d
                    if m.get("final"):
                        self.sims_failed = {int(k): v for k, v in d["sims_failed"].items()}
                        self.y_sum = None if d["y_sum"] is None else d["y_sum"].numpy().copy()
            self._state_seq = int(m["seq"])
            if m.get("final"):
                self._final = True
            self._cond.notify_all()
        if not m.get("final"):
            self._resume.wait()  # parked at the state until the checkpoint is taken
