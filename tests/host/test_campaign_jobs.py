"""Campaigns as jobs of the service, on both stores: a queued campaign runs under the reference
policy of the service that takes it (its --allow-module), so a spec the service no longer allows
fails before any model or data loads, stored as failed with the reason; the typed campaign state
reads rows written by earlier versions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from host.campaign import CampaignSpec
from host.campaign.references import ReferencePolicy
from host.service.campaigns import CampaignJobs
from host.store import Store
from host.store.campaigns import CampaignState, CampaignStore
from host.store.service import JOB_FAILED, ServiceStore


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with Store(db_url) as opened:
        yield opened


def test_a_queued_campaign_runs_under_the_policy_of_the_service_that_takes_it(
    store: Store, tmp_path: Path
) -> None:
    spec = CampaignSpec(model="tests.taskmodels:regressor", data="tests.taskmodels:regression_data")
    CampaignStore(store).create_campaign("camp-mod", spec.to_dict())  # queued when it was allowed
    work = tmp_path / "work" / "camp-mod"
    ServiceStore(store).put_job("camp-mod", "campaign", {"work_dir": str(work)})
    jobs = CampaignJobs(store, fleet=None, owner="svc-test",  # type: ignore[arg-type]
                        policy=ReferencePolicy.for_api(allowed_modules=()))  # fmt: skip
    claimed = ServiceStore(store).claim_next("svc-test", 60)
    assert claimed is not None
    jobs.run_one(claimed.job_id, claimed.params)
    job = ServiceStore(store).get_job("camp-mod")
    assert job is not None and job.state == JOB_FAILED and "--allow-module tests" in job.error
    campaign = CampaignStore(store).get_campaign("camp-mod")
    assert campaign is not None and campaign.status == "failed"
    assert "not one the service lets campaigns name" in (campaign.state.error or "")
    assert not work.exists()


def test_campaign_state_is_typed_and_reads_rows_of_earlier_and_later_versions(
    store: Store,
) -> None:
    cstore = CampaignStore(store)
    cstore.create_campaign("camp-s", {"model": "builtin:digits_cnn", "data": "builtin:digits"})
    cstore.update_campaign("camp-s", state={"devices": ["pi-1"], "baseline_metric": 0.97})
    state = cstore.get_campaign("camp-s").state  # type: ignore[union-attr]
    assert isinstance(state, CampaignState)
    assert state.devices == ["pi-1"] and state.baseline_metric == 0.97 and state.error is None
    with pytest.raises(ValueError, match="no field"):
        cstore.update_campaign("camp-s", state={"devicez": ["pi-2"]})
    assert CampaignState.model_validate({"devices": ["a"], "from_a_later_version": 1}).devices == [
        "a"
    ]
