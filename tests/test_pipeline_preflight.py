"""Tests of taskspace_utils.pipeline.preflight and models.check_available: a device or model this
machine lacks stops a run before anything is written (before: inside the first kernel, after the run
and unit folders were made). No hub is contacted: the hub cache is one written by the test, and
the network is either off (``HF_HUB_OFFLINE``) or a stand-in."""

from __future__ import annotations

import pytest
import torch
from pipeline_workspace import cache_hub_models, hub_cache, workspace  # noqa: F401 (fixtures)

from taskspace_utils import models
from taskspace_utils.models import ModelNotAvailableError, check_available
from taskspace_utils.pipeline import Overrides, PlanError, build_plan, check_machine, run
from taskspace_utils.pipeline.preflight import check_device, plan_devices


def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_devices_this_machine_lacks_are_named(monkeypatch):
    no_cuda(monkeypatch)
    check_device("cpu", "here")
    with pytest.raises(PlanError, match=r"device 'cuda' \(notebook 01 of u\): CUDA is not available on this "
                                        r"machine \(torch .*\); use --device cpu"):
        check_device("cuda", "notebook 01 of u")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_device("cuda", "x")
    check_device("cuda:1", "x")
    with pytest.raises(PlanError, match=r"device 'cuda:2' \(x\): this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        check_device("cuda:2", "x")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(PlanError, match="device 'mps' .*MPS backend is not available"):
        check_device("mps", "x")


def test_a_run_on_a_device_that_is_not_here_writes_nothing(workspace, monkeypatch):
    """--device cuda without a GPU: refused by run() (and so by the dry run's check) before the run
    folder exists; the same plan on the CPU passes the check."""
    notebooks, profiles, counter, tmp = workspace
    no_cuda(monkeypatch)
    out = tmp / "run"
    plan = build_plan(profiles, "pair", notebooks_dir=notebooks, out_dir=out, overrides=Overrides(device="cuda"))
    devices = plan_devices(plan)
    assert devices == {"cuda": "notebook 01_build_data of test--alpha"}
    with pytest.raises(PlanError, match="device 'cuda' .*CUDA is not available"):
        run(plan, log=lambda line: None)
    assert not out.exists() and not counter.exists()
    check_machine(build_plan(profiles, "pair", notebooks_dir=notebooks, out_dir=out, overrides=Overrides(device="cpu")))


def test_check_available_finds_cached_snapshots_and_names_the_rest(hub_cache, tmp_path):
    """A cached snapshot with config and weights is found offline; a missing revision, a snapshot
    without weights and an unknown name get load_model's message; local and suite specs as load_model (a folder needs config and weights)."""
    assert check_available("test/alpha") == "hub cache"
    cache_hub_models(hub_cache, ["org/pythia-x"], revision="step3000")
    assert check_available("org/pythia-x@step3000") == "hub cache"
    with pytest.raises(ModelNotAvailableError, match=r"'org/pythia-x' at revision 'step512' is not in the local "
                                                     r"Hugging Face cache and the hub cannot be reached"):
        check_available("org/pythia-x@step512")
    cache_hub_models(hub_cache, ["org/no-weights"])
    next((hub_cache / "models--org--no-weights" / "snapshots").iterdir()).joinpath("model.safetensors").unlink()
    with pytest.raises(ModelNotAvailableError, match="'org/no-weights' is not in the local Hugging Face cache"):
        check_available("org/no-weights")
    with pytest.raises(ModelNotAvailableError, match="no such local folder"):
        check_available("./no/such/folder")
    (tmp_path / "saved").mkdir()
    with pytest.raises(ModelNotAvailableError, match="folder has no config.json"):
        check_available(tmp_path / "saved")
    (tmp_path / "saved" / "config.json").write_text("{}")
    with pytest.raises(ModelNotAvailableError, match=r"folder has no \*\.safetensors or pytorch_model\*\.bin"):
        check_available(tmp_path / "saved")
    (tmp_path / "saved" / "model.safetensors").write_bytes(b"")
    assert check_available(tmp_path / "saved") == "local"


def test_check_available_asks_a_reachable_hub_once(monkeypatch, hub_cache):
    """Not cached but the hub answers: an unknown repository is named; a request that fails for
    other reasons (timeout, server error) passes the check (loading will say more)."""
    import huggingface_hub
    from huggingface_hub.utils import RepositoryNotFoundError

    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: True)
    asked = []

    def missing(self, repo_id, revision=None, timeout=None, **kwargs):
        asked.append((repo_id, revision, timeout))
        import httpx  # huggingface_hub's HTTP client; its errors carry the response

        raise RepositoryNotFoundError("404 Client Error. Repository Not Found for url: https://hf.co/api/models/org/nope",
                                      response=httpx.Response(404, request=httpx.Request("GET", "https://hf.co")))

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", missing)
    with pytest.raises(ModelNotAvailableError, match=r"cannot load model 'org/nope@v2' from the hub: RepositoryNotFoundError: 404"):
        check_available("org/nope@v2", timeout=5.0)
    assert asked == [("org/nope", "v2", 5.0)]

    def flaky(self, repo_id, revision=None, timeout=None, **kwargs):
        raise TimeoutError("read timed out")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", flaky)
    assert check_available("org/slow") == "hub"


def test_a_run_with_an_uncached_hub_model_writes_nothing(workspace):
    """No network and test/delta not cached: the run stops naming the unit, before any folder."""
    notebooks, profiles, counter, tmp = workspace
    out = tmp / "run"
    plan = build_plan(profiles, "pair", notebooks_dir=notebooks, out_dir=out,
                      overrides=Overrides(models=["test/alpha", "test/delta@v1"]))
    with pytest.raises(PlanError, match=r"unit test--delta@v1: model 'test/delta' at revision 'v1' is not in the "
                                        r"local Hugging Face cache and the hub cannot be reached \(no network\)"):
        run(plan, log=lambda line: None)
    assert not out.exists() and not counter.exists()


def test_a_scheduler_address_where_nothing_listens_is_refused_before_any_work(workspace):
    """Before: distributed's traceback after a 30 s connect timeout, with plan.json written."""
    import socket

    from taskspace_utils.pipeline import check_before_run, check_scheduler

    notebooks, profiles, counter, tmp = workspace
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        address = f"tcp://127.0.0.1:{listening.getsockname()[1]}"
        check_scheduler(address)
        out = tmp / "run"
        plan = build_plan(profiles, "pair", notebooks_dir=notebooks, out_dir=out)
        assert check_before_run(plan, "dask", address) == [
            f"devices and models are checked by the notebooks on the workers of {address}, not here"]
        closed = address
    with pytest.raises(PlanError, match=r"--scheduler 'tcp://127\.0\.0\.1:\d+': no Dask scheduler answers there"):
        run(plan, executor="dask", scheduler=closed, log=lambda line: None)
    assert not out.exists() and not counter.exists()


def test_disk_warning_compares_the_estimate_with_free_space(workspace, monkeypatch):
    """A warning (the estimate is rough) when the run's estimated bytes, less what its folder already
    holds, exceed the free space; none when they fit."""
    import collections

    from taskspace_utils.pipeline import disk_warning, preflight
    from taskspace_utils.pipeline.estimate import estimate_unit
    from taskspace_utils.pipeline.validate import source_tasks

    notebooks, profiles, _, tmp = workspace
    out = tmp / "run"
    plan = build_plan(profiles, "pair", notebooks_dir=notebooks, out_dir=out, overrides=Overrides(models=["tiny-s"]))
    n_tasks = len(source_tasks(plan.data_source, "data"))
    needed = sum(size for unit in plan.units for _, size, _ in estimate_unit(unit, plan, n_tasks).values())
    assert needed > 0
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage(10 * needed, 9 * needed, needed))
    assert disk_warning(plan) is None
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage(10 * needed, 10 * needed - 1, needed - 1))
    warning = disk_warning(plan)
    assert warning.startswith(f"disk: this run may write about {needed / 1e9:.1f} GB to {out} (rough estimate") and \
        "GB are free on its file system" in warning
    out.mkdir()
    (out / "written.bin").write_bytes(b"\0" * 2)  # a resumed run: what is there counts as written
    assert disk_warning(plan) is None


def test_the_check_of_a_cpu_plan_of_suite_models_imports_no_torch():
    """The dry run of the default profiles stays light (about half a second): torch is imported only
    for a device other than the CPU or a hub or local model."""
    import subprocess
    import sys

    code = """
import sys
from pathlib import Path
from taskspace_utils.pipeline.plan import NotebookJob, Plan, Unit
from taskspace_utils.pipeline.preflight import check_machine
unit = Unit(model="tiny-m", kind="suite", revision="final", run_dir=Path("."),
            jobs=[NotebookJob(name="01_build_data", parameters={"device": "cpu"})])
check_machine(Plan(profile="p", description="", run_dir=Path("."), notebooks_dir=Path("."), notebooks={}, suite=None,
                   units=[unit], comparison=[], unit_notebooks=[]))
print("torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
