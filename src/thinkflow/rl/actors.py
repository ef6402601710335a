"""``rl.mode=async``: rollout actors on Ray that generate experience with a slightly stale policy, and
the learner's side of it.

- Each actor (``RolloutWorker``, a Ray actor restarted by Ray when it dies) holds its own model copy
  and ``hf`` engine. Per task it fetches the newest published weights if its copy is older, samples
  one RL step's batch of groups (same prompts-per-step, group size, rewards and advantages as the
  synchronous mode), and returns it with the policy version it used and its behaviour log-probs.
- The learner (``AsyncExperience``) keeps one task in flight per actor: the in-flight tasks are the
  bounded queue (``num_actors`` batches at most), so actors generate while the learner learns. It
  takes whichever batch is ready first, drops batches more than ``max_staleness`` versions old
  (counted), resubmits, and after each update publishes the new weights through Ray's object store
  (versioned; an actor picks them up between batches).
- Weak links, simulated: every weight download and experience upload waits ``latency_s`` +
  bytes / ``bandwidth_mb_s`` (``rl.actors.link``).
- Faults: an actor that dies is restarted by Ray (``max_restarts=-1``); its in-flight batch is lost
  (counted) and the learner goes on with the others. The learner's state is Lightning's checkpoint;
  a resumed learner starts new actors, which fetch its weights before their first batch.
- Stops (SIGTERM / Ctrl-C, ``thinkflow.shutdown``): the learner saves at its next step and the stage
  closes the actors; if the grace period ends first (an RL step can take longer), the stop kills the
  actors from the main thread, which ends the learner's wait on a batch, and the stage ends. Closing
  kills the actors and, when the stage started a local Ray, shuts it down and kills what Ray leaves
  behind (its agents outlive the raylet by a minute), so no Ray process outlives the pipeline.

Off-policy correction happens in the learner (``GRPOModule._learn``): truncated importance weights
``min(pi_learner / pi_behaviour, is_cap)`` per token, with the PPO ratio taken against the learner's
policy at the start of the update (decoupled PPO).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch

from thinkflow import logs, shutdown
from thinkflow.config import ActorsConfig, ConfigError, RLConfig, TaskConfig
from thinkflow.rl.experience import Experience
from thinkflow.rl.seeds import prompt_rng, sampling_seed
from thinkflow.tracking import write_json

log = logs.get("rl")


def transfer_delay(nbytes: float, link: dict) -> float:
    """Seconds a transfer of ``nbytes`` takes on the simulated link (latency + bytes / bandwidth)."""
    bw = link.get("bandwidth_mb_s")
    return link.get("latency_s", 0.0) + (nbytes / (bw * 1e6) if bw else 0.0)


def tensor_bytes(obj) -> int:
    """Bytes of every tensor in a (nested) dataclass / dict / list."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return sum(tensor_bytes(getattr(obj, f)) for f in obj.__dataclass_fields__)
    return 0


def too_stale(batch_version: int, learner_version: int, max_staleness: int) -> bool:
    """A batch generated ``learner_version - batch_version`` policy versions ago is dropped past the cap."""
    return learner_version - batch_version > max_staleness


def connect(address: str | None, num_cpus: int) -> bool:
    """Join (or start, when ``address`` is None) a Ray cluster; True if this call started Ray."""
    # Ray's failure signal handler (abseil) in this process would catch a SIGTERM and abort the process 3 s later
    # (abseil's alarm_on_failure_secs), whatever it is doing then: a pipeline stop (thinkflow.shutdown) takes longer,
    # as it ends the runs and Ray itself. Read when ray is first imported.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    try:
        import ray
    except ImportError:
        raise ConfigError("rl.mode=async needs Ray: pip install 'thinkflow[ray]'") from None
    if ray.is_initialized():
        return False
    if address and address != "auto":  # fail fast: Ray itself keeps retrying an address nobody answers on
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=10).close()
        except (OSError, ValueError) as err:
            raise ConfigError(f"Ray cluster at rl.actors.address={address!r} is unreachable: {err}") from None
    try:
        kwargs = {"num_cpus": num_cpus} if address is None else {}
        ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=True, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ConfigError(f"Ray cluster at rl.actors.address={address!r} is unreachable: {err}") from None
    return True


class RolloutWorker:
    """One rollout actor (the class Ray runs; see ``AsyncExperience``)."""

    def __init__(
        self, index: int, checkpoint: str, task: dict, rl: dict, problems: list, seed: int, threads: int
    ) -> None:
        from thinkflow.inference import HFEngine
        from thinkflow.models import load_checkpoint
        from thinkflow.rl.objectives import ObjectiveConfig
        from thinkflow.rl.rewards import RewardConfig

        torch.set_num_threads(threads)
        self.index, self.seed, self.problems = index, seed, problems
        self.rl = RLConfig(**rl)
        self.model, self.tokenizer = load_checkpoint(checkpoint)
        self.model.eval().requires_grad_(False)
        self.engine = HFEngine(self.model, self.tokenizer)
        # the stage's task config (less n_test), built as the stage builds it
        self.task = TaskConfig(**task).build(self.tokenizer)
        self.reward = RewardConfig(self.rl.reward.correct_weight, self.rl.reward.format_weight)
        rl_ = self.rl
        self.objective = ObjectiveConfig(
            rl_.objective, rl_.clip_low, rl_.clip_high, rl_.beta, length_norm=rl_.max_new_tokens
        )
        self.version, self.last_end = -1, None

    def pid(self) -> int:
        return os.getpid()

    def rollout(self, batch_index: int, version: int, weights: list) -> dict:
        """One RL step's batch from the newest weights (``weights[0]``, an object ref, fetched only when
        ``version`` is newer than this actor's copy)."""
        import ray

        from thinkflow.inference import SamplingParams
        from thinkflow.profile.ledger import phase, stage_ledger
        from thinkflow.rl.rollout import collect

        start = time.perf_counter()
        idle = start - self.last_end if self.last_end is not None else 0.0
        link = self.rl.actors.link.model_dump()
        bytes_down, sync_s = 0, 0.0
        if version != self.version:
            state = ray.get(weights[0])
            bytes_down = tensor_bytes(state)
            time.sleep(transfer_delay(bytes_down, link))
            self.model.load_state_dict(state)
            self.engine = type(self.engine)(self.model, self.tokenizer)  # fresh fused weights
            self.version, sync_s = version, time.perf_counter() - start
        rng = prompt_rng(self.seed, batch_index)  # the refills draw from it too
        prompts = rng.sample(self.problems, min(self.rl.prompts_per_step, len(self.problems)))
        sampling = SamplingParams(
            temperature=self.rl.temperature,
            top_p=self.rl.top_p,
            max_new_tokens=self.rl.max_new_tokens,
            seed=sampling_seed(self.seed, batch_index),
        )
        t_gen = time.perf_counter()
        with stage_ledger() as ledger, phase("rollout"):
            rollouts = collect(
                self.engine,
                self.task,
                prompts,
                self.rl.group_size,
                sampling,
                self.reward,
                self.objective,
                more_problems=lambda n: rng.sample(self.problems, min(n, len(self.problems))),
                max_refill=self.rl.max_refill,
            )
        gen_s = time.perf_counter() - t_gen
        bytes_up = tensor_bytes(rollouts)
        t_up = time.perf_counter()
        time.sleep(transfer_delay(bytes_up, link))
        self.last_end = time.perf_counter()
        return {
            "rollouts": rollouts,
            "version": self.version,
            "actor": self.index,
            "pid": os.getpid(),
            "bytes_down": bytes_down,
            "bytes_up": bytes_up,
            "sync_s": sync_s,
            "gen_s": gen_s,
            "upload_s": self.last_end - t_up,
            "idle_s": idle,
            "compute": ledger.as_dict(),
        }


@dataclass
class StepStats:
    """What the learner saw since its last step (reset by ``AsyncExperience.step_metrics``)."""

    wait_s: float = 0.0
    bytes: int = 0
    sync_s: float = 0.0
    actor_idle_s: float = 0.0
    staleness: list[int] = field(default_factory=list)


class AsyncExperience:
    """The learner's side: actors, the in-flight batches, published weights, counters (the experience source
    interface of ``rl.experience``)."""

    off_policy = True  # a batch may come from an older policy version than the learner's

    def __init__(
        self, cfg: ActorsConfig, rl: RLConfig, checkpoint: str, task: dict, problems: list, seed: int, work: Path
    ) -> None:
        self.cfg, self.work = cfg, Path(work)
        self.actors: list = []
        self.closed, self._lock = False, threading.Lock()  # the lock: no task is submitted once closed
        self._shut = False  # close() has run
        self.version, self.next_index = 0, 0
        self.weights = None
        self.inflight: dict = {}  # object ref -> actor index
        self.down: set[int] = set()  # actors that died and are not back yet
        self.probes: dict = {}  # pid() calls to dead actors, answered when Ray has restarted them
        self.restarts = self.lost = self.dropped = 0
        self.stats = StepStats()
        self.pids: dict[int, int] = {}
        before = {p.pid for p in psutil.Process().children()}
        self.started_ray = connect(cfg.address, max(os.cpu_count() or 1, cfg.num_actors * cfg.threads))
        # the processes ray.init started here (GCS, raylet, ...; their children come later): ended by close
        self.ray_processes = [p for p in psutil.Process().children() if p.pid not in before] if self.started_ray else []
        self._stop_hook = shutdown.register("Ray rollout actors", last=self.end_actors)
        try:
            self._start(rl, checkpoint, task, problems, seed)
        except BaseException:
            self.close()
            raise

    def _start(self, rl: RLConfig, checkpoint: str, task: dict, problems: list, seed: int) -> None:
        import ray

        remote = ray.remote(RolloutWorker).options(max_restarts=-1, max_task_retries=0, num_cpus=self.cfg.threads)
        # held for the stage's lifetime: a restarted actor is constructed again from these arguments
        self.problems_ref = ray.put(problems)
        with self._lock:
            self._check_open()
            self.actors = [
                remote.remote(i, checkpoint, task, rl.model_dump(), self.problems_ref, seed, self.cfg.threads)
                for i in range(self.cfg.num_actors)
            ]
        self._record_pids()

    # -- weights ------------------------------------------------------------------------------
    def publish(self, model) -> None:
        """A new policy version in the object store; actors take it before their next batch."""
        import ray

        self.version += 1
        self.weights = ray.put({k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})

    # -- experience ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        """Call with the lock held, before anything that submits to Ray: once closed, a submission would start
        a new local Ray (Ray's auto-init)."""
        if self.closed:
            raise shutdown.StopRequested("rl: stopped; the rollout actors were ended")

    def _submit(self, actor: int) -> None:
        with self._lock:
            self._check_open()
            ref = self.actors[actor].rollout.remote(self.next_index, self.version, [self.weights])
        self.next_index += 1
        self.inflight[ref] = actor

    def _fill(self) -> None:
        busy = set(self.inflight.values()) | self.down
        for i in range(len(self.actors)):
            if i not in busy:
                self._submit(i)

    def _probe(self, actor: int) -> None:
        """Ask a dead actor for its pid: answered once Ray has restarted it."""
        with self._lock:
            self._check_open()
            self.probes[self.actors[actor].pid.remote()] = actor

    def _probe_answered(self, ref) -> None:
        import ray

        actor = self.probes.pop(ref)
        try:
            pid = ray.get(ref)
        except ray.exceptions.RayActorError:  # not back yet
            self._probe(actor)
            return
        self.down.discard(actor)
        if pid != self.pids.get(actor):
            self.restarts += 1
            self.pids[actor] = pid
            self._write_pids()
            log.info("rollout actor %s is back as process %s (restarts: %d)", actor, pid, self.restarts)

    def _check_probes(self) -> None:
        import ray

        if self.probes:
            ready, _ = ray.wait(list(self.probes), num_returns=len(self.probes), timeout=0)
            for ref in ready:
                self._probe_answered(ref)

    def next(self, model, step: int) -> Experience:
        """The next usable batch (waits for one if none is ready); staleness-filtered. The actors number their
        batches themselves (``step``, the learner's RL step, is not used)."""
        import ray

        if self.weights is None:  # first call (also after a resume): the learner's weights go out
            self.publish(model)
        while True:
            self._check_probes()
            self._fill()
            t0 = time.perf_counter()
            ready, _ = ray.wait([*self.inflight, *self.probes], num_returns=1)
            self.stats.wait_s += time.perf_counter() - t0
            if ready[0] in self.probes:  # every live actor is busy or none is live: a restart came back
                self._probe_answered(ready[0])
                continue
            actor = self.inflight.pop(ready[0])
            try:
                out = ray.get(ready[0])
            except ray.exceptions.RayActorError as err:  # the actor died: Ray restarts it
                with self._lock:
                    self._check_open()  # or a stop ended it
                self.lost += 1
                self.down.add(actor)
                self._probe(actor)
                log.warning(
                    "rollout actor %s died (%s); its in-flight batch is lost (%d so far) and Ray restarts "
                    "it; training goes on with the others",
                    actor,
                    type(err).__name__,
                    self.lost,
                )
                continue
            self.stats.bytes += out["bytes_down"] + out["bytes_up"]
            self.stats.sync_s += out["sync_s"]
            self.stats.actor_idle_s += out["idle_s"]
            if too_stale(out["version"], self.version, self.cfg.max_staleness):
                self.dropped += 1
                continue
            self.stats.staleness.append(self.version - out["version"])
            self._fill()  # this actor starts its next batch while the learner learns from this one
            rollouts = out["rollouts"]
            rollouts.metrics |= {"dist/behaviour_version": float(out["version"])}
            return Experience(rollouts, compute=out["compute"])

    def settle(self, timeout: float = 120.0) -> dict[str, float]:
        """At the end of training: wait (bounded) for restarting actors to come back, then the final
        fault counters."""
        import ray

        deadline = time.time() + timeout
        while self.probes and time.time() < deadline:
            ready, _ = ray.wait(list(self.probes), num_returns=1, timeout=max(deadline - time.time(), 0.01))
            for ref in ready:
                self._probe_answered(ref)
        return {
            "dist/actor_restarts": float(self.restarts),
            "dist/lost_batches": float(self.lost),
            "dist/dropped_stale": float(self.dropped),
            "dist/actors_down": float(len(self.down)),
        }

    def step_metrics(self, step_s: float) -> dict[str, float]:
        s, self.stats = self.stats, StepStats()
        return {
            "dist/staleness_mean": sum(s.staleness) / max(len(s.staleness), 1),
            "dist/bytes_per_step": float(s.bytes),
            "dist/actor_restarts": float(self.restarts),
            "dist/lost_batches": float(self.lost),
            "dist/dropped_stale": float(self.dropped),
            "dist/learner_idle_frac": min(s.wait_s / max(step_s, 1e-9), 1.0),
            "dist/weight_sync_s": s.sync_s,
            "dist/actor_idle_s": s.actor_idle_s,
            "dist/policy_version": float(self.version),
        }

    def _record_pids(self) -> None:
        """``<work>/actors.json``: each actor's process id (to watch or kill one)."""
        import ray

        for i, actor in enumerate(self.actors):
            self.pids[i] = ray.get(actor.pid.remote(), timeout=600)
        self._write_pids()

    def _write_pids(self) -> None:
        write_json(self.work / "actors.json", {"pids": {str(k): v for k, v in self.pids.items()}})

    def state(self) -> dict:
        return {
            "version": self.version,
            "next_index": self.next_index,
            "restarts": self.restarts,
            "lost": self.lost,
            "dropped": self.dropped,
        }

    def load_state(self, state: dict) -> None:
        self.version, self.next_index = state.get("version", 0), state.get("next_index", 0)
        self.restarts, self.lost, self.dropped = state.get("restarts", 0), state.get("lost", 0), state.get("dropped", 0)
        self.weights = None  # republished from the restored learner on the next batch

    def end_actors(self) -> None:
        """A stop whose grace period ended with the learner still in the stage (the main thread calls this): kill
        the actors, which ends the learner's wait on them; it then ends the stage, whose ``close`` shuts Ray down
        in the learner's thread (``ray.shutdown`` from another thread, the learner in a Ray call, aborted the
        process). No task is submitted after this."""
        import ray

        with self._lock:
            if self.closed:
                return
            self.closed = True
        for actor in self.actors:
            with contextlib.suppress(Exception):  # already dead
                ray.kill(actor, no_restart=True)

    def close(self) -> None:
        """Kill the actors and, if this stage started Ray, shut it down with every process it ran (from the stage's
        thread as it ends)."""
        import ray

        with self._lock:
            if self._shut:
                return
            self.closed = self._shut = True
        shutdown.unregister(self._stop_hook)
        ray_tree = []  # found before the shutdown: once the raylet is gone, its children are no longer below it
        for p in self.ray_processes:
            with contextlib.suppress(psutil.Error):
                ray_tree += [p, *p.children(recursive=True)]
        for actor in self.actors:
            with contextlib.suppress(Exception):  # already dead
                ray.kill(actor, no_restart=True)
        if self.started_ray:
            ray.shutdown()
        for p in ray_tree:  # Ray's dashboard and runtime-env agents outlive its shutdown by a minute
            with contextlib.suppress(psutil.Error):  # gone (psutil also refuses a pid that was reused)
                p.kill()
