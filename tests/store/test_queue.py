"""The queue's job ids: which run a run's job is for."""

from __future__ import annotations

import pytest
from arq.worker import JobExecutionFailed

from app.store import queue


def test_the_run_of_a_run_job_and_of_its_resumes_and_none_for_other_jobs() -> None:
    assert queue.run_of_job(queue.run_job_id("0193abc")) == "0193abc"
    assert queue.run_of_job(queue.resume_job_id("0193abc", 2)) == "0193abc"
    assert queue.run_of_job("delivery:6a1f") is None
    assert queue.run_of_job("hourly:1735689600000") is None
    assert queue.run_of_job("run:") is None


def test_a_failed_jobs_exception_is_kept_as_its_type_and_message_and_nothing_else_unencodable_is() -> None:
    """arq keeps the exception a job failed with as its result (max retries exceeded, a crash)."""
    kept = queue.loads(queue.dumps({"r": JobExecutionFailed("max 1 retries exceeded"), "a": ["r1"]}))
    assert kept == {"r": "JobExecutionFailed: max 1 retries exceeded", "a": ["r1"]}
    with pytest.raises(TypeError, match="a job cannot hold a object"):
        queue.dumps({"r": object()})
