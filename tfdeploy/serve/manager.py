"""Which versions of which models are served, and their states (TF Serving's).

Each model's base path is polled every ``poll_seconds``. A version the policy wants is
loaded and warmed up on a thread while the current one keeps answering; only once it is
AVAILABLE does it take new requests, and only then are versions the policy no longer
wants unloaded (their in-flight requests finish first). A version that fails to load is
reported (state END with its error) and never replaces a working one; it is retried
when its folder changes.
"""
import asyncio
import contextlib
import dataclasses
import os
import traceback

from tfdeploy.serve import batching
from tfdeploy.serve.servable import Servable

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


class NotFound(LookupError):
    """Unknown model, version or signature: HTTP 404 / gRPC NOT_FOUND."""


@dataclasses.dataclass
class Version:
    number: int
    state: str = START
    error: str = ""
    servable: Servable = None
    runner: object = None       # a Batcher or Direct
    stamp: float = 0.0          # folder mtime when it failed
    inflight: int = 0


@dataclasses.dataclass
class ServeOptions:
    artifact: str = "auto"
    replicas: int = 1
    threads: int = 0
    enable_batching: bool = True
    batching: object = None     # config.Batching
    devices: tuple = ()
    observe: object = None      # batch size callback (metrics)
    idle: object = None         # () -> True while one request is in flight (metrics)


class Model:
    def __init__(self, name, base_path, policy, options):
        self.name, self.base_path, self.policy, self.options = name, base_path, policy, options
        self.versions = {}

    def on_disk(self):
        try:
            return sorted(int(d) for d in os.listdir(self.base_path)
                          if d.isdigit() and os.path.isdir(os.path.join(self.base_path, d)))
        except OSError:
            return []

    def aspired(self):
        usable = [v for v in self.on_disk() if not self.failed(v)]
        kind = self.policy.get("policy", "latest")
        if kind == "all":
            return usable
        if kind == "specific":
            return [v for v in usable if v in self.policy.get("versions", [])]
        return usable[-self.policy.get("num_versions", 1):]

    def failed(self, number):
        v = self.versions.get(number)
        return v is not None and v.state == END and v.error and \
            v.stamp == mtime(self.folder(number))

    def folder(self, number):
        return os.path.join(self.base_path, str(number))

    def available(self, number=None):
        if number is not None:
            v = self.versions.get(number)
            if v is None or v.state != AVAILABLE:
                raise NotFound(f"Servable not found for request: Specific({self.name}, "
                               f"{number})")
            return v
        ready = [v for n, v in sorted(self.versions.items()) if v.state == AVAILABLE]
        if not ready:
            raise NotFound(f"Servable not found for request: Latest({self.name})")
        return ready[-1]

    @contextlib.contextmanager
    def using(self, number=None):
        """The version to answer with, counted in flight until the answer is out."""
        v = self.available(number)
        v.inflight += 1
        try:
            yield v
        finally:
            v.inflight -= 1

    async def refresh(self, loop):
        while True:  # a version that fails drops out of aspired(): the next one is tried
            wanted = self.aspired()
            to_load = [n for n in wanted if n not in self.versions or
                       (self.versions[n].state == END and self.versions[n].error)]
            if not to_load:
                break
            for number in to_load:
                await self.load(number, loop)
        if any(self.versions[n].state == AVAILABLE for n in wanted):
            for number, v in list(self.versions.items()):
                if number not in wanted and v.state == AVAILABLE:
                    await self.unload(v, loop)

    async def load(self, number, loop):
        v = Version(number, LOADING)
        self.versions[number] = v
        opts = self.options
        try:
            servable = await loop.run_in_executor(None, self._load, number)
        except Exception as e:  # noqa: BLE001 — any failure is this version's status
            v.state, v.stamp = END, mtime(self.folder(number))
            v.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            print(f"model {self.name} version {number}: failed to load: {v.error}", flush=True)
            if os.environ.get("TFDEPLOY_SERVE_DEBUG"):
                traceback.print_exc()
            return
        threads = (opts.batching.num_batch_threads if opts.batching and
                   opts.batching.num_batch_threads else opts.replicas)
        if opts.enable_batching:
            v.runner = batching.Batcher(servable, opts.batching, threads)
        else:
            v.runner = batching.Direct(servable, threads, opts.idle)
        if opts.observe:
            v.runner.observe = opts.observe
        v.servable, v.state = servable, AVAILABLE
        print(f"model {self.name} version {number}: serving {servable.artifact} "
              f"({servable.runtime}, {opts.replicas} replica(s))", flush=True)

    def _load(self, number):
        opts = self.options
        servable = Servable(self.folder(number), opts.artifact, opts.replicas, opts.threads,
                            opts.devices)
        servable.warm_up()
        return servable

    async def unload(self, v, loop):
        v.state = UNLOADING
        while v.inflight:  # requests that already took this version finish on it
            await asyncio.sleep(0.01)
        await loop.run_in_executor(None, v.runner.close)
        v.state, v.servable, v.runner = END, None, None
        print(f"model {self.name} version {v.number}: unloaded", flush=True)


def mtime(path):
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


class Manager:
    def __init__(self, models, poll_seconds):
        self.models = {m.name: m for m in models}
        self.poll_seconds = poll_seconds

    def model(self, name):
        if name not in self.models:
            raise NotFound(f"Servable not found for request: Latest({name})")
        return self.models[name]

    async def refresh(self):
        loop = asyncio.get_running_loop()
        for model in self.models.values():
            await model.refresh(loop)

    async def poll_forever(self):
        while True:
            await asyncio.sleep(self.poll_seconds)
            await self.refresh()

    def close(self):
        for model in self.models.values():
            for v in model.versions.values():
                if v.runner:
                    v.runner.close()
