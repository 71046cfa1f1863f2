"""The receiving process: the Receiver of receiver.py, run outside the training process.

The trainer (rxremote.RemoteReceiver) starts `python -m onlinetrain.rxproc ...` with its own
process group. This process opens the channel (shm ring, TCP), assembles, adapts and accounts for
every frame exactly as the receiving thread does, and sends what the trainer needs over a private
shared-memory ring (`ot_<channel>-rx<rank>`, created by the trainer) as frames of the documented
format (docs/wire-format.md; no pickle): so the training process spends its GIL on training, not
on decoding frames (why: docs/receiver.md).

Messages on the private ring (one frame each, in order), by frame name:
- `b`: training rows, float32 (n, dx + dy + 4): x | y | the (sim, step) keys as int64 viewed as
  4 float32 columns; `time_step` = dx, `sim_id` = dy.
- `v`: held-out validation rows, the same layout.
- `m`: accounting after a batch of frames: meta JSON of the counters, int64 array of the new done
  ids, then the whole failed set and the whole incomplete set when they changed (the lengths are
  in the JSON, -1 for unchanged).
- `end`: the stream ended (the trainer ends its buffer after the rows before it).
- `state`: the receiver's state (`Receiver.state_dict()`, a torch file written atomically in the
  trainer's private directory, read back with `weights_only=True`); meta JSON {seq, path, final,
  error}. It is sent on request (a checkpoint: everything before it is what the state accounts
  for) and once at exit (`final`).

Control, trainer -> here: JSON lines on stdin, {"cmd": "state", "seq": k} and {"cmd": "stop"}; end
of stdin (the trainer died) stops this process too.

    python -m onlinetrain.rxproc --config CFG.json --url shm://demo --ring demo-rx0 --dir TMP
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading

import numpy as np

from . import frame as fr
from .receiver import Receiver
from .shm_segment import Full, segment_path

log = logging.getLogger("onlinetrain.rxproc")  # also when run as __main__
ROWS, VAL, META, END, STATE = "b", "v", "m", "end", "state"


def pack_rows(x: np.ndarray, y: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """x (n, dx), y (n, dy) float32 and keys (n, 2) int64 as one float32 (n, dx + dy + 4) array."""
    n, dx, dy = len(keys), x.shape[1], y.shape[1]
    rows = np.empty((n, dx + dy + 4), np.float32)
    rows[:, :dx] = x
    rows[:, dx:dx + dy] = y
    rows[:, dx + dy:] = np.ascontiguousarray(keys, "<i8").view("<f4").reshape(n, 4)
    return rows


def rows_frame(name: str, x: np.ndarray, y: np.ndarray, keys: np.ndarray) -> fr.Frame:
    """A `b` or `v` message: the rows packed, dx in time_step, dy in sim_id."""
    return fr.Frame(int(y.shape[1]), int(x.shape[1]), name=name, array=pack_rows(x, y, keys))


def state_frame(seq: int, path: str | None, final: bool, error: str | None) -> fr.Frame:
    """A `state` message: where the state file is (None: none was written) and what went wrong."""
    meta = json.dumps({"seq": seq, "path": path, "final": final, "error": error}).encode()
    return fr.Frame(0, 0, name=STATE, meta=meta)


def unpack_rows(f: fr.Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The inverse of pack_rows for a `b` or `v` frame; refuses a frame of another layout."""
    a, dx, dy = f.array, f.time_step, f.sim_id
    if a.dtype != np.float32 or a.ndim != 2 or dx < 0 or dy < 0 or a.shape[1] != dx + dy + 4:
        raise fr.FrameError(f"receiving process sent rows of shape {a.shape} ({a.dtype}) for "
                            f"{dx} inputs and {dy} targets", a.shape)
    keys = np.ascontiguousarray(a[:, dx + dy:]).view("<i8").reshape(-1, 2)
    return a[:, :dx], a[:, dx:dx + dy], keys


class _Sink:
    """The child's 'buffer': each put_many is one `b` frame; a full ring is backpressure."""

    def __init__(self, prod):
        self.prod, self.ended = prod, False

    def put_many(self, x, y, keys, timeout: float | None = None) -> int:
        n = len(keys)
        if n == 0:
            return 0
        try:
            self.prod.put(rows_frame(ROWS, x, y, keys), timeout=timeout)
        except Full:
            return 0
        return n

    def end_stream(self):
        if not self.ended:
            self.ended = True
            self.prod.put(fr.Frame(0, 0, name=END), timeout=None)


class ChildReceiver(Receiver):
    """The Receiver, sending validation rows and its accounting to the trainer."""

    def __init__(self, consumer, prod, cfg, adapter, expected_sims=None, finished=None):
        super().__init__(consumer, _Sink(prod), cfg, adapter, expected_sims, finished)
        self.prod = prod
        self._sent = (set(), set(), set())  # done, failed, incomplete as last sent
        self._last: dict = {}

    def _keep_val(self, xs, ys, keys) -> None:
        self.prod.put(rows_frame(VAL, xs, ys, keys), timeout=None)

    def handle_batch(self, frames) -> None:
        super().handle_batch(frames)
        self.send_meta()

    def send_meta(self) -> None:
        asm = self.asm
        c = {"frames": self.frames, "samples": self.samples, "rejected": self.rejected,
             "duplicates": asm.duplicates, "stream_ends": self.stream_ends,
             "y_count": self.y_count, "abandoned": int(getattr(self.consumer, "abandoned", 0)),
             "n_done": len(asm.done), "n_failed": len(asm.failed)}
        done, failed, inc = self._sent
        new_done = asm.done - done if len(asm.done) != len(done) else set()
        failed_changed = len(asm.failed) != len(failed) or set(asm.failed) != failed
        inc_changed = asm.incomplete != inc
        if c == self._last and not inc_changed and not failed_changed:
            return
        self._last = dict(c)
        done |= new_done
        self._sent = (done, set(asm.failed), set(asm.incomplete))
        ids = (sorted(new_done) + (sorted(asm.failed) if failed_changed else [])
               + (sorted(asm.incomplete) if inc_changed else []))
        c.update({"new_done": len(new_done),
                  "failed": len(asm.failed) if failed_changed else -1,
                  "incomplete": len(asm.incomplete) if inc_changed else -1})
        meta = json.dumps(c).encode()
        self.prod.put(fr.Frame(0, 0, name=META, array=np.array(ids, np.int64), meta=meta),
                      timeout=None)

    def state_dict(self) -> dict:
        d = super().state_dict()
        if self.stats is not None:
            from .stats_state import to_tensors  # noqa: PLC0415
            d["stats_state"] = to_tensors(self.stats.state_dict())
            d["stats_counts"] = dict(self.stats.counts)
        return d


def _write_state(rx: ChildReceiver, directory: str, seq: int, final: bool) -> None:
    """The state file, then its `state` frame (under the receiver's lock: consistent)."""
    import torch  # noqa: PLC0415
    err = None if rx.error is None else f"{type(rx.error).__name__}: {rx.error}"
    with rx.lock:
        path = os.path.join(directory, f"state-{seq}.pt")
        try:
            torch.save(rx.state_dict(), path + ".tmp")
            os.replace(path + ".tmp", path)
        except Exception as e:  # noqa: BLE001 - reported to the trainer, which raises it
            path, err = None, err or f"cannot write the receiver's state: {e}"
        rx.prod.put(state_frame(seq, path, final, err), timeout=None)


def _control(rx: ChildReceiver, directory: str) -> None:
    """Reads the trainer's requests on stdin; its end (the trainer is gone) stops the receiver."""
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            log.error("bad control line %r", line[:200])
            continue
        if msg.get("cmd") == "state":
            _write_state(rx, directory, int(msg["seq"]), False)
        elif msg.get("cmd") == "stop":
            break
    rx.stop_event.set()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m onlinetrain.rxproc")
    ap.add_argument("--config", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--ring", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--expected", type=int, default=None)
    ap.add_argument("--study", default=None)
    ap.add_argument("--resume", default=None)
    ap.add_argument("--log-level", default="WARNING")
    ap.add_argument("--parent", type=int, default=0, help="the trainer's pid")
    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log_level, stream=sys.stderr,
                        format=f"%(levelname)s receiver[{a.rank}] %(name)s: %(message)s")
    from .channel import open_consumer  # noqa: PLC0415
    from .config import from_dict  # noqa: PLC0415
    from .imports import import_function  # noqa: PLC0415
    from .shm_channel import RingProducer  # noqa: PLC0415
    from .stats import Statistics, stats_wanted  # noqa: PLC0415
    with open(a.config) as fh:
        d = json.load(fh)
    cfg = from_dict(d["config"], a.config)
    cfg.given = frozenset(d["given"])  # keys the user set (e.g. any [stats] key: statistics on)
    adapter = import_function(cfg.model.adapter, "model.adapter")
    finished = None
    if a.study:
        from .ledger import Ledger  # noqa: PLC0415
        from .study import StudyDone  # noqa: PLC0415
        finished = StudyDone(Ledger(a.study))
    parent = a.parent or os.getppid()  # (it may have died before this process got here)
    prod = consumer = None
    try:
        prod = RingProducer.attach(a.ring, timeout=10)
        consumer = open_consumer(a.url, capacity=cfg.channel.ring_mb << 20,
                                 study_dir=cfg.output.dir)
        if getattr(consumer, "port", None) is not None:  # port 0 listeners: tell the producers
            with open(os.path.join(cfg.output.dir, f"endpoint-rank{a.rank}"), "w") as fh:
                fh.write(f"tcp://{consumer.host}:{consumer.port}\n")
        rx = ChildReceiver(consumer, prod, cfg, adapter, a.expected, finished)
        if stats_wanted(cfg):
            rx.stats = Statistics(cfg.stats, steps_hint=cfg.solver.steps, report=log.warning)
        if a.resume:
            import torch  # noqa: PLC0415
            d = torch.load(a.resume, map_location="cpu", weights_only=True)
            rx.load_state_dict(d)
            if rx.stats is not None and d.get("stats_state") is not None:
                rx.stats.load_state_dict(d["stats_state"])
        threading.Thread(target=_control, args=(rx, a.dir), daemon=True,
                         name="ot-rx-control").start()
        rx.send_meta()  # the restored accounting, before anything else
        rx.run()  # this thread; ends the stream (an `end` frame) however it stops
        if rx.stats is not None and rx.error is None:  # [stats] runs on one rank only
            rx.stats.save(os.path.join(cfg.output.dir, "stats.npz"))
        _write_state(rx, a.dir, -1, True)
    except BaseException as e:  # noqa: BLE001 - the trainer must hear why
        log.error("receiving process failed: %s: %s", type(e).__name__, e)
        try:
            if prod is not None:
                prod.put(state_frame(-1, None, True, f"{type(e).__name__}: {e}"), timeout=5)
        except Exception:  # noqa: BLE001 - the trainer sees the process exit instead
            pass
        return 1
    finally:
        if consumer is not None:
            consumer.close()
        if prod is not None:
            prod.close()
        if os.getppid() != parent:  # the trainer died: its private ring is ours to remove
            try:
                os.unlink(segment_path(a.ring))
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
