"""The process-sample flow against a real (temporary, SQLite) Prefect server."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_process_sample_flow(prefect_server, tmp_path, sample, tiny_model):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.process import process_sample_flow

    out = tmp_path / "out"
    state = process_sample_flow(folder=str(sample), out_dir=str(out), model=str(tiny_model), return_state=True)
    assert state.is_completed()
    res = state.result()
    assert json.loads((out / "S-001.json").read_text())["sample_id"] == "S-001"
    assert res["paths"]["xlsx"].endswith("S-001.xlsx")
    # the flow and the direct path (wbc process without a server) write the same report
    from wbcproc.pipeline import process_sample

    direct = json.loads(process_sample(sample, tmp_path / "direct", model=tiny_model)["json"].read_text())
    flowed = json.loads((out / "S-001.json").read_text())
    for r in (direct, flowed):
        r.pop("processed_at"), r.pop("report_id")
    assert flowed == direct

    import anyio

    async def inspect():
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            )
            artifacts = await client.read_artifacts()
            tasks = await client.read_task_runs()
            return runs, artifacts, tasks

    runs, artifacts, tasks = anyio.run(inspect)
    assert runs[0].name == "S-001"
    kinds = {a.type for a in artifacts if a.flow_run_id == runs[0].id}
    assert kinds == {"table", "markdown"}
    table = next(a for a in artifacts if a.type == "table" and a.flow_run_id == runs[0].id)
    assert "Neutrophils" in str(table.data)
    names = {t.name.split("-")[0] for t in tasks if t.flow_run_id == runs[0].id}
    assert {"validate", "classify", "aggregate", "write"} <= names


@pytest.mark.slow
def test_missing_folder_fails_the_run(prefect_server, tmp_path, tiny_model):
    from flows.process import process_sample_flow

    state = process_sample_flow(
        folder=str(tmp_path / "nope"), out_dir=str(tmp_path / "o"), model=str(tiny_model), return_state=True
    )
    assert state.is_failed()
    assert not (tmp_path / "o").exists()
