"""The ``concurrency:`` key of a job file: checked at load, rendered into the plan."""

from __future__ import annotations

import json

import pytest

from flwd_server.config import load_settings
from flwd_server.errors import InvalidArgs, InvalidJob
from flwd_server.jobs.files import parse_job
from flwd_server.models import Concurrency, Principal
from flwd_server.planner import job_from_record, plan_record

JOB = """
name: deploy
args:
  env: {type: string, required: true}
  token: {type: string, secret: true}
concurrency: %s
steps:
  - run: echo deploying
"""


def _fields(concurrency: str) -> dict[str, str]:
    with pytest.raises(InvalidJob) as caught:
        parse_job(JOB % concurrency, "s", "deploy.yaml")
    return {e["field"]: e["message"] for e in caught.value.errors}


def test_the_key_parses_with_its_defaults():
    job = parse_job(JOB % "{group: 'deploy-{{ args.env }}'}", "s", "deploy.yaml")
    assert job.concurrency == Concurrency(group="deploy-{{ args.env }}", limit=1, when_busy="queue")
    full = parse_job(JOB % "{group: deploy, limit: 3, when_busy: replace}", "s", "deploy.yaml")
    assert full.concurrency == Concurrency(group="deploy", limit=3, when_busy="replace")
    assert full.to_dict()["concurrency"] == {"group": "deploy", "limit": 3, "when_busy": "replace"}


@pytest.mark.parametrize(
    ("concurrency", "field", "words"),
    [
        ("{group: 'deploy-{{ args.token }}'}", "concurrency.group", "secret argument 'token'"),
        ("{group: 'deploy-{{ args.nope }}'}", "concurrency.group", "unknown argument 'nope'"),
        ("{group: 'deploy-{{ env }}'}", "concurrency.group", "'{{ args.NAME }}'"),
        ("{group: ''}", "concurrency.group", "required"),
        ("{limit: 2}", "concurrency.group", "required"),
        ("{group: g, limit: 0}", "concurrency.limit", "whole number"),
        ("{group: g, limit: true}", "concurrency.limit", "whole number"),
        ("{group: g, limit: 1.5}", "concurrency.limit", "whole number"),
        ("{group: g, when_busy: wait}", "concurrency.when_busy", "queue, reject, replace"),
        ("{group: g, max: 2}", "concurrency.max", "unknown key"),
        ("deploy", "concurrency", "mapping"),
    ],
)
def test_bad_concurrency_is_refused_at_load_naming_the_field(concurrency, field, words):
    fields = _fields(concurrency)
    assert field in fields and words in fields[field], fields


def test_the_plan_renders_the_group_and_keeps_it_in_the_record(tmp_path):
    from flwd_server.catalog import Catalog
    from flwd_server.planner import Planner

    job = parse_job(JOB % "{group: 'deploy-{{ args.env }}', limit: 2}", "s", "deploy.yaml")
    settings = load_settings(None, {"data_dir": str(tmp_path)}, environ={})
    planner = Planner(Catalog(), settings, lambda: b"k" * 32)
    plan = planner.plan_job(job, {"env": "prod", "token": "hunter2"}, None, Principal("t"))
    assert plan.group == "deploy-prod"
    assert plan.to_dict()["concurrency"] == {"group": "deploy-prod", "limit": 2, "when_busy": "queue"}
    assert plan.group_spec() == ("deploy-prod", 2, "queue")
    assert job_from_record(json.loads(plan_record(plan))).concurrency == job.concurrency
    other = planner.plan_job(job, {"env": "staging"}, None, Principal("t"))
    assert other.group == "deploy-staging" and other.digest != plan.digest
    with pytest.raises(InvalidArgs):
        planner.plan_job(job, {"env": "x" * 300}, None, Principal("t"))


def test_a_job_without_the_key_has_no_concurrency_anywhere():
    job = parse_job(JOB.replace("concurrency: %s\n", ""), "s", "deploy.yaml")
    assert job.concurrency is None and "concurrency" not in job.to_dict()
