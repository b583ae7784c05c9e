"""The agent's docker runtime end to end: a real agent, the real Docker engine (Debian's docker.io,
host networking only), Mosquitto, and a Distribution registry that requires basic auth."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge_agent._agent import Agent
from edge_agent._runtime import agent_label
from publisher import Model, Module, Workspace
from publisher._image import ModuleImage, build_module_image_async
from tests._docker import DockerEngine
from tests._services import Service, free_port
from tests.docker._harness import (
    EXPECTED,
    IRIS_DIR,
    SCORE_SCRIPT,
    SCRIPTS,
    Deployer,
    agent_config,
    docker_module,
    label_of,
    labels_of,
    module_containers,
    package_image,
    score,
    wait_for,
)


@pytest.fixture
def deployer(image_workspace: Workspace, mosquitto: Service) -> Deployer:
    return Deployer(image_workspace, mosquitto.port, f"d{os.urandom(3).hex()}")


@pytest.fixture
async def start_agent(
    tmp_path: Path,
    mosquitto: Service,
    distribution_basic_auth: Service,
    docker_engine: DockerEngine,
    deployer: Deployer,
) -> AsyncIterator[Callable[..., Any]]:
    started: list[Agent] = []

    async def start(device_id: str = "dev-d1", **extra: Any) -> Agent:
        config = agent_config(
            tmp_path / device_id,
            device_id,
            mosquitto,
            distribution_basic_auth,
            docker_engine,
            deployer,
            **extra,
        )
        agent = Agent(config)
        await agent.start()
        started.append(agent)
        return agent

    try:
        yield start
    finally:
        for agent in started:
            await agent.stop()


def verdict(agent: Agent, name: str, version: int) -> Any:
    state = agent.deployments.get(name)
    done = state is not None and state.version == version and state.outcome != "applying"
    return state if done else None


def running(agent: Agent, digest: str, name: str = "scorer") -> bool:
    state = agent.modules.get(name)
    return bool(state and state.status == "running" and state.digest == digest and state.health == "healthy")


async def test_an_iotedge_docker_module_from_a_basic_auth_registry_runs_and_answers_score(
    start_agent: Callable[..., Any], deployer: Deployer, docker_engine: DockerEngine, iris_image: ModuleImage
) -> None:
    agent = await start_agent()
    mine = label_of(agent)
    port = free_port()
    await deployer.deploy(deployer.document("iris", 1, {"scorer": docker_module(iris_image.reference, port)}))
    await wait_for(lambda: running(agent, iris_image.digest), what="the module image running")

    async with aiohttp.ClientSession() as session:
        status, body = await score(port, session)
    assert status == 200, body
    assert body["predictions"] == EXPECTED
    state = agent.modules["scorer"]
    assert state.pid and state.restart_count == 0 and state.exit_code is None
    ids = module_containers(docker_engine, mine, "scorer")
    assert len(ids) == 1
    labels = labels_of(docker_engine, ids[0])
    assert labels["io.modelfleet.image-digest"] == iris_image.digest
    assert labels["io.modelfleet.deployment"] == "iris"
    assert labels["io.modelfleet.version"] == "1.0"
    await wait_for(lambda: agent.runtime.logs("scorer", 100), what="the container's output in getLogs")
    print(f"served by container {ids[0][:12]}: {body}")

    # `restartModule`: a fresh container of the same version, on the same port
    await agent.runtime.restart("scorer")
    await wait_for(lambda: running(agent, iris_image.digest), what="the module running again")
    [again] = module_containers(docker_engine, mine, "scorer")
    assert again != ids[0]
    async with aiohttp.ClientSession() as session:
        status, body = await score(port, session)
    assert (status, body["predictions"]) == (200, EXPECTED)

    await agent.stop()
    assert module_containers(docker_engine, mine, "scorer") == [], "a clean agent stop leaves no container"


async def test_the_same_module_answers_alike_as_a_container_and_as_a_process(
    start_agent: Callable[..., Any],
    deployer: Deployer,
    image_workspace: Workspace,
    base_image_ref: str,
    iris_model: Model,
) -> None:
    """One packaged module, deployed twice in one document: as its image (docker runtime) and as
    the module artifact (process runtime). The seed-style request gets the same answer from both."""
    module = await Module.package_async(
        image_workspace,
        f"iris-both-{os.urandom(3).hex()}",
        [iris_model],
        entry_script=SCORE_SCRIPT,
        sample_input=IRIS_DIR / "sample-input.json",
    )
    image, _ = await build_module_image_async(image_workspace, module)
    agent = await start_agent()
    container_port, process_port = free_port(), free_port()
    as_process = {
        "type": "modelfleet",
        "status": "running",
        "restartPolicy": "on-failure",
        "settings": {"module": module.repository, "digest": module.digest, "port": process_port},
    }
    modules = {"container": docker_module(image.reference, container_port), "process": as_process}
    await deployer.deploy(deployer.document("both", 1, modules))
    await wait_for(lambda: running(agent, image.digest, "container"), what="the image running")
    await wait_for(lambda: running(agent, module.digest, "process"), what="the module process running")
    # A module reports running once it answers; its front proxy is switched to it just after that.
    both = {"container", "process"}
    await wait_for(lambda: agent.runtime.serving().keys() >= both, what="both behind their front proxies")
    serving = agent.runtime.serving()
    assert serving["container"].pid != serving["process"].pid

    async with aiohttp.ClientSession() as session:
        from_container = await score(container_port, session)
        from_process = await score(process_port, session)
    assert from_container[0] == 200, from_container
    assert from_container == from_process
    assert from_container[1]["predictions"] == EXPECTED


def _status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


async def test_an_agent_killed_with_sigkill_readopts_its_container_without_a_second_copy(
    tmp_path: Path,
    mosquitto: Service,
    distribution_basic_auth: Service,
    docker_engine: DockerEngine,
    deployer: Deployer,
    iris_image: ModuleImage,
) -> None:
    """A modelfleet module built as an image (`settings.image`), run by `modelfleet agent run`."""
    module_port, status_port = free_port(), free_port()
    argv = [
        sys.executable, "-m", "modules.cli", "agent", "run", "--device-id", "dev-k",
        "--fleet", deployer.topics.fleet, "--hub", mosquitto.url, "--registry", distribution_basic_auth.url,
        "--trust", str(deployer.public_key), "--data-dir", str(tmp_path / "agent"),
        "--status-port", str(status_port), "--listen-host", "127.0.0.1",
    ]  # fmt: skip
    mine = agent_label("dev-k", (tmp_path / "agent").resolve())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFLEET_", "DOCKER_"))}
    assert distribution_basic_auth.username and distribution_basic_auth.password
    env |= {
        "MODELFLEET_DOCKER_HOST": docker_engine.host,
        "MODELFLEET_REGISTRY_USERNAME": distribution_basic_auth.username,
        "MODELFLEET_REGISTRY_PASSWORD": distribution_basic_auth.password,
    }
    module = {
        "type": "modelfleet",
        "status": "running",
        "restartPolicy": "always",
        "settings": {
            "module": f"modules/{iris_image.module.split(':')[0]}",
            "digest": f"sha256:{'0' * 64}",
            "port": module_port,
            "image": iris_image.reference,
        },
    }
    log = (tmp_path / "agent.log").open("wb")
    first = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    second = None
    try:
        await deployer.deploy(deployer.document("iris", 1, {"scorer": module}))

        def serving() -> dict[str, Any] | None:
            state = _status(status_port)
            scorer = (state or {}).get("modules", {}).get("scorer") or {}
            applied = (state or {}).get("deployments", {}).get("iris", {}).get("outcome") == "applied"
            ok = scorer.get("status") == "running" and scorer.get("digest") == iris_image.digest
            return state if ok and applied else None

        before = await wait_for(serving, what="the container running under the first agent")
        [container] = module_containers(docker_engine, mine, "scorer", "running")

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        assert module_containers(docker_engine, mine, "scorer", "running") == [
            container
        ]  # outlives the agent
        record = json.loads((tmp_path / "agent" / "state.json").read_text())["modules"]["scorer"]
        async with aiohttp.ClientSession() as session:
            status, body = await score(record["internal_port"], session)
            assert (status, body["predictions"]) == (200, EXPECTED)

        second = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        after = await wait_for(serving, what="the container re-adopted by the second agent")
        assert module_containers(docker_engine, mine, "scorer") == [container], (
            "re-adopted, never a second copy"
        )
        assert after["modules"]["scorer"]["pid"] == before["modules"]["scorer"]["pid"]
        async with aiohttp.ClientSession() as session:
            status, body = await score(module_port, session)
        assert (status, body["predictions"]) == (200, EXPECTED)

        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
        assert module_containers(docker_engine, mine, "scorer") == [], "a clean stop removes the container"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
        for leftover in module_containers(docker_engine, mine, "scorer"):
            docker_engine.run("rm", "-f", leftover, check=False)
        log.close()


async def test_a_refused_or_failing_update_leaves_the_old_container_serving(
    start_agent: Callable[..., Any],
    deployer: Deployer,
    docker_engine: DockerEngine,
    image_workspace: Workspace,
    iris_model: Model,
    iris_image: ModuleImage,
) -> None:
    """init() crashing, `Privileged` under the default policy, `gpu: required` on this GPU-less
    machine, `imagePullPolicy: never` for an image not on the device: each reported failed with
    its reason, and the first version keeps serving. Then `gpu: preferred` runs, on the CPU."""
    agent = await start_agent()
    mine = label_of(agent)
    port = free_port()
    await deployer.deploy(deployer.document("iris", 1, {"scorer": docker_module(iris_image.reference, port)}))
    await wait_for(lambda: running(agent, iris_image.digest), what="v1 running")
    [serving] = module_containers(docker_engine, mine, "scorer", "running")
    failing = await package_image(image_workspace, iris_model, SCRIPTS / "failing_init.py")

    updates = [
        (docker_module(failing.reference, port), "model file is corrupt: cannot load weights"),
        (
            docker_module(iris_image.reference, port, create={"HostConfig": {"Privileged": True}}),
            "Privileged is refused by this device's policy",
        ),
        (
            docker_module(iris_image.reference, port, settings={"gpu": "required"}),
            "requires a GPU (gpu: required), and this device's Docker engine has no GPU runtime",
        ),
    ]
    for version, (module, reason) in enumerate(updates, start=2):
        await deployer.deploy(deployer.document("iris", version, {"scorer": module}))
        outcome = await wait_for(
            lambda v=version: verdict(agent, "iris", v), what=f"the verdict on v{version}"
        )
        print(f"v{version}: {outcome.outcome}: {outcome.reason}")
        assert outcome.outcome == "failed"
        assert reason in (outcome.reason or "")
        state = agent.modules["scorer"]
        assert (state.status, state.digest) == ("running", iris_image.digest)
        assert module_containers(docker_engine, mine, "scorer") == [serving], "nothing running changed"
        async with aiohttp.ClientSession() as session:
            status, body = await score(port, session)
        assert (status, body["predictions"]) == (200, EXPECTED)

    # `imagePullPolicy: never` with an image the device does not have: refused, nothing pulled.
    docker_engine.run("rmi", "-f", failing.reference, check=False)
    never = {**docker_module(failing.reference, port), "imagePullPolicy": "never"}
    await deployer.deploy(deployer.document("iris", 5, {"scorer": never}))
    outcome = await wait_for(lambda: verdict(agent, "iris", 5), what="the verdict on v5")
    print(f"v5: {outcome.outcome}: {outcome.reason}")
    assert outcome.outcome == "failed"
    assert "is not on this device, and imagePullPolicy is never" in (outcome.reason or "")
    assert docker_engine.run("image", "inspect", failing.reference, check=False).returncode != 0
    assert module_containers(docker_engine, mine, "scorer") == [serving]

    # `gpu: preferred` here runs on the CPU, says so, and its create options' limits are enforced.
    limited = {"HostConfig": {"Memory": 512 << 20, "NanoCpus": 1_000_000_000}}
    module = docker_module(iris_image.reference, port, create=limited, settings={"gpu": "preferred"})
    await deployer.deploy(deployer.document("iris", 6, {"scorer": module}))
    outcome = await wait_for(lambda: verdict(agent, "iris", 6), what="the verdict on v6")
    assert outcome.outcome == "applied", outcome.reason
    state = agent.modules["scorer"]
    print(f"v6: {state.status}, limits: {state.limits}")
    assert state.limits == (
        "memory 512 MiB, cpus 1 (enforced by the Docker engine); "
        "GPU: none on this device (gpu: preferred): CPU execution provider"
    )
    await wait_for(lambda: module_containers(docker_engine, mine, "scorer") != [serving], what="v1 gone")
    [container] = module_containers(docker_engine, mine, "scorer")
    host = json.loads(docker_engine.run("inspect", "--format", "{{json .HostConfig}}", container).stdout)
    assert (host["Memory"], host["NanoCpus"], host["NetworkMode"]) == (512 << 20, 1_000_000_000, "host")
    assert not host.get("DeviceRequests")


async def test_a_pull_that_would_eat_into_the_reserved_disk_space_is_refused_before_it_starts(
    start_agent: Callable[..., Any], deployer: Deployer, docker_engine: DockerEngine, iris_image: ModuleImage
) -> None:
    docker_engine.run("rmi", "-f", iris_image.reference, check=False)
    agent = await start_agent(reserve_bytes=1 << 50)
    await deployer.deploy(
        deployer.document("iris", 1, {"scorer": docker_module(iris_image.reference, free_port())})
    )

    def reported() -> Any:
        state = agent.deployments.get("iris")
        return state if state is not None and state.reason else None

    outcome = await wait_for(reported, what="the deployment's state with a reason")
    print(f"{outcome.outcome}: {outcome.reason}")
    assert f"not enough disk space: module {iris_image.reference}" in (outcome.reason or "")
    assert "retrying at" in (outcome.reason or "")  # space can be freed: it is tried again
    assert docker_engine.run("image", "inspect", iris_image.reference, check=False).returncode != 0


async def test_a_container_that_keeps_crashing_backs_off_and_reports_its_exit_code(
    start_agent: Callable[..., Any],
    deployer: Deployer,
    docker_engine: DockerEngine,
    image_workspace: Workspace,
    base_image_ref: str,
    iris_model: Model,
) -> None:
    crashy = await package_image(
        image_workspace, iris_model, Path(__file__).parent / "scripts" / "crash_later.py"
    )
    agent = await start_agent()
    mine = label_of(agent)
    module = docker_module(crashy.reference, free_port(), env={"CRASH_AFTER_S": {"value": "3"}})
    await deployer.deploy(deployer.document("crashy", 1, {"scorer": module}))
    seen: set[str] = set()

    def restarted_twice() -> bool:
        state = agent.modules.get("scorer")
        if state is None:
            return False
        seen.add(state.status)
        if state.status == "backoff":
            assert state.next_restart_at is not None and state.exit_code == 3
        assert len(module_containers(docker_engine, mine, "scorer")) <= 1, "one container per module"
        return state.restart_count >= 2

    await wait_for(restarted_twice, what="two restarts after crashes")
    assert "backoff" in seen
    print(f"states seen: {sorted(seen)}; restarts: {agent.modules['scorer'].restart_count}")
    await agent.stop()  # mid-backoff or mid-restart: nothing may be left behind
    assert module_containers(docker_engine, mine, "scorer") == []


def _has_image(engine: DockerEngine, reference: str) -> bool:
    return engine.run("image", "inspect", reference, check=False).returncode == 0


async def _retag(ws: Workspace, image: ModuleImage, tag: str) -> str:
    """Push `image`'s manifest under `tag` (what `docker tag` + `docker push` do)."""
    async with ws.registry_client() as client:
        manifest = await client.get_manifest(image.repository, image.digest)
        await client.put_manifest(image.repository, tag, manifest.body, manifest.media_type)
    return image.reference.split("@", 1)[0] + f":{tag}"


async def test_an_update_under_steady_load_has_zero_failed_requests_and_a_re_pushed_tag_is_redeployed(
    start_agent: Callable[..., Any],
    deployer: Deployer,
    docker_engine: DockerEngine,
    image_workspace: Workspace,
    base_image_ref: str,
    iris_model: Model,
) -> None:
    name = f"iris-tag-{os.urandom(3).hex()}"
    v1 = await package_image(image_workspace, iris_model, SCORE_SCRIPT, name)
    v2 = await package_image(image_workspace, iris_model, SCRIPTS / "score_v2.py", name)
    v3 = await package_image(image_workspace, iris_model, SCRIPTS / "chatty.py", name)
    assert len({v1.digest, v2.digest, v3.digest}) == 3
    agent = await start_agent(docker_tag_poll_s=0.5)
    mine = label_of(agent)
    port = free_port()
    await deployer.deploy(deployer.document("iris", 1, {"scorer": docker_module(v1.reference, port)}))
    await wait_for(lambda: running(agent, v1.digest), what="v1 running")

    results: list[int | str] = []
    versions: list[Any] = []
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            try:
                status, body = await score(port, session)
            except aiohttp.ClientError as exc:
                results.append(type(exc).__name__)
                continue
            results.append(status)
            if status == 200:
                versions.append(body.get("version"))

    async with aiohttp.ClientSession() as session:
        clients = [asyncio.create_task(client(session)) for _ in range(4)]
        await wait_for(lambda: len(results) > 20, what="load on v1")
        await deployer.deploy(deployer.document("iris", 2, {"scorer": docker_module(v2.reference, port)}))
        await wait_for(lambda: running(agent, v2.digest), what="v2 running")
        count = len(results)
        await wait_for(lambda: len(results) > count + 20, what="load on v2")
        stop.set()
        await asyncio.gather(*clients)
    failures = [r for r in results if r != 200]
    print(f"update under load: {len(results)} requests, {len(failures)} failed")
    assert failures == [], f"{len(failures)} of {len(results)} requests failed: {failures[:5]}"
    assert versions[0] is None and versions[-1] == 2  # served by v1, then by v2
    # the old one drains, then goes
    await wait_for(
        lambda: len(module_containers(docker_engine, mine, "scorer")) == 1, what="v1's container gone"
    )
    # v1's image is collected once nothing uses it; v2's, in use, never
    await wait_for(lambda: not _has_image(docker_engine, v1.reference), what="v1's image collected")
    assert _has_image(docker_engine, v2.reference)

    # By tag: deployed as `:stable`, then `:stable` pushed again with v3's content.
    stable = await _retag(image_workspace, v2, "stable")
    await deployer.deploy(deployer.document("iris", 3, {"scorer": docker_module(stable, port)}))
    await wait_for(lambda: verdict(agent, "iris", 3), what="the verdict on v3")
    assert agent.deployments["iris"].outcome == "applied"
    await wait_for(lambda: running(agent, v2.digest), what="the tag's first content running")
    await _retag(image_workspace, v3, "stable")
    await wait_for(lambda: running(agent, v3.digest), what="the tag's new content redeployed")
    await wait_for(
        lambda: len(module_containers(docker_engine, mine, "scorer")) == 1, what="the old content gone"
    )
    [container] = module_containers(docker_engine, mine, "scorer")
    assert labels_of(docker_engine, container)["io.modelfleet.image-digest"] == v3.digest
    async with aiohttp.ClientSession() as session:
        status, body = await score(port, session)
    assert (status, body["predictions"]) == (200, EXPECTED)
