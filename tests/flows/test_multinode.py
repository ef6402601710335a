"""Several nodes per stage through DeepSpeed's launcher: a hostfile, pdsh over ssh, one node agent per host.

The two "nodes" are two host names of this machine (``localhost`` and ``127.0.0.1``) behind a real sshd
on a free port: pdsh starts a DeepSpeed node agent on each over ssh, exactly as on a cluster, and the
ranks rendezvous over TCP.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import compose
from tests.stopping import no_leftovers, pipeline_command, signal_once_logged, start, statuses

SSH_OPTS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"


def _free_port() -> int:
    from thinkflow.distributed.launch import free_port

    return free_port()


@pytest.fixture
def sshd(tmp_path, monkeypatch):
    """A private sshd on 127.0.0.1 accepting a fresh key; pdsh/ssh use it through PDSH_SSH_ARGS_APPEND."""
    for tool in ("sshd", "pdsh", "ssh-keygen"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(f"{tool} missing: apt-get install openssh-server pdsh (.ci/run does)")
    d = tmp_path / "ssh"
    d.mkdir()
    for key in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "user.pub").read_text())
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege-separation dir
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    proc = subprocess.Popen([sshd_bin, "-D", "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log")])
    monkeypatch.setenv("PDSH_SSH_ARGS_APPEND", f"-i {d / 'user'} {SSH_OPTS}")
    deadline = time.time() + 30
    while (
        subprocess.run(
            [
                "ssh",
                "-o",
                "BatchMode=yes",
                "-p",
                str(port),
                "-i",
                str(d / "user"),
                *SSH_OPTS.split(),
                "127.0.0.1",
                "true",
            ],
            capture_output=True,
        ).returncode
        != 0
    ):
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"sshd did not come up: {(d / 'sshd.log').read_text(errors='replace')[-2000:]}")
        time.sleep(0.5)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def _two_node_overrides(hostfile: Path, port: int) -> list[str]:
    return [
        "trainer=cpu_zero2",
        "trainer.devices=1",
        "trainer.num_nodes=2",
        "trainer.launcher=deepspeed",
        f"trainer.hostfile={hostfile}",
        f"trainer.ssh_port={port}",
        "trainer.progress_bar=false",
    ]


@pytest.mark.slow
def test_pretrain_on_two_nodes_through_the_deepspeed_launcher(tmp_path, sshd, prefect_server):
    from flows.pipeline import pipeline
    from thinkflow.models import load_checkpoint

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes, one process each\nlocalhost slots=1\n127.0.0.1 slots=1\n")
    config = compose([*_two_node_overrides(hostfile, sshd), "~rl", "~ttc", "~compare"], root=tmp_path)
    result = pipeline(config)

    log = next((tmp_path / "mlruns" / "work" / "launch").glob("*/launch.log")).read_text()
    assert "pdsh -S -f 1024 -w localhost,127.0.0.1" in log  # pdsh started one node agent per host over ssh
    assert "localhost: " in log and "nnodes=2, num_local_procs=1, node_rank=0" in log
    assert "127.0.0.1: " in log and "nnodes=2, num_local_procs=1, node_rank=1" in log
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log  # node 1's process joined the same world as rank 1
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    run = client.get_run(result["pretrain"].run_id)
    assert run.info.status == "FINISHED" and run.data.params["distributed.world_size"] == "2"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps and steps == sorted(set(steps))  # logged once (rank 0 only), not once per node
    model, _ = load_checkpoint(result["pretrain"].checkpoint)  # whole weights, written by rank 0
    assert all(p.numel() > 0 for p in model.parameters())


@pytest.mark.slow
def test_sigterm_during_a_two_node_stage_ends_every_rank_on_every_node(tmp_path, sshd):
    """SIGTERM to the pipeline while pretrain runs on two nodes: the runs end KILLED, and no launcher, pdsh, node
    agent or rank is left on either host (each has the stage's work dir on its command line)."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    cmd, env = pipeline_command(
        tmp_path,
        *_two_node_overrides(hostfile, sshd),
        "~rl",
        "~ttc",
        "~compare",
        "pretrain.max_steps=3000",
        "pretrain.ckpt_every=5000",
        "pretrain.eval_every=5000",
        "pretrain.log_every=5",
    )
    log = tmp_path / "first.log"
    first = start(cmd, env, log)
    tree = signal_once_logged(tmp_path, first, log, "pretrain", "train/loss")
    first.wait(timeout=120)
    assert first.returncode == -signal.SIGTERM, log.read_text()[-3000:]
    assert statuses(tmp_path) == {"pipeline": "KILLED", "pretrain": "KILLED"}
    sshd_pid = int((tmp_path / "ssh" / "sshd.pid").read_text())  # the fixture's, with its config on its command line
    assert no_leftovers(tmp_path, tree, ignore={sshd_pid}) == []


def test_an_unreachable_host_stops_the_launch_before_any_process(tmp_path, monkeypatch):
    from thinkflow.distributed.launch import launch

    if shutil.which("pdsh") is None:
        pytest.fail("pdsh missing: apt-get install pdsh (.ci/run does)")
    monkeypatch.setenv("PDSH_SSH_ARGS_APPEND", SSH_OPTS)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    config = compose(_two_node_overrides(hostfile, _free_port()), root=tmp_path)  # nothing listens there
    from thinkflow.config import ConfigError, validate

    with pytest.raises(
        ConfigError, match=r"host localhost \(trainer.hostfile\) is not reachable over passwordless ssh"
    ):
        launch("pretrain", config, "r", "p", {}, validate(config).trainer, tmp_path / "spool")
    assert not (tmp_path / "spool" / "launch.log").exists()  # nothing was started


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("localhost slots=1\n", r"trainer.num_nodes=2 but .* lists 1 host"),
        ("localhost slots=1\nnode2 slots=0\n", r"has fewer slots"),
        ("localhost slots=1\nnode2 gpus=8\n", r"line 2: 'node2 gpus=8' is not 'host slots=N'"),
        ("a slots=1\na slots=1\n", r"host 'a' is listed twice"),
    ],
)
def test_bad_hostfiles_are_named(tmp_path, text, error):
    from thinkflow.config import ConfigError
    from thinkflow.distributed.launch import read_hostfile

    (tmp_path / "hostfile").write_text(text)
    with pytest.raises(ConfigError, match=error):
        read_hostfile(tmp_path / "hostfile", num_nodes=2, devices=1)
    with pytest.raises(ConfigError, match="does not exist"):
        read_hostfile(tmp_path / "absent", num_nodes=2, devices=1)


def test_several_nodes_need_the_deepspeed_launcher_and_a_hostfile(tmp_path):
    from thinkflow.config import ConfigError, validate

    for overrides in (["trainer.num_nodes=2"], ["trainer.num_nodes=2", "trainer.launcher=deepspeed"]):
        with pytest.raises(ConfigError, match="needs trainer.launcher=deepspeed and trainer.hostfile"):
            validate(compose(overrides, root=tmp_path))
    multinode = validate(compose(["trainer=multinode_zero3"], root=tmp_path)).trainer
    assert (multinode.num_nodes, multinode.launcher, multinode.deepspeed.stage) == (2, "deepspeed", 3)
    assert os.path.isabs(multinode.hostfile)
