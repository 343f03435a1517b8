"""Replica autoscaling arguments (serving_app.autoscaling) and the Serve options they become; no Ray started."""

from __future__ import annotations

import pytest

from serving_app.placement import deployment_options
from serving_app.serve_args import ServeArgs, parse_serve_args

BASE = {"model_name": "/models/m", "target_device": "CPU", "max_ongoing_requests": 32}


def test_both_num_replicas_and_autoscaling_config_is_an_error_naming_the_field():
    with pytest.raises(ValueError) as error:
        parse_serve_args({**BASE, "num_replicas": 2, "autoscaling_config": {"max_replicas": 2}})
    assert "args.num_replicas: give num_replicas (a fixed count) or autoscaling_config, not both" in str(error.value)


@pytest.mark.parametrize("config, where", [
    ({"min_replicas": 3, "max_replicas": 2}, "autoscaling_config.max_replicas: 2 is below min_replicas 3"),
    ({"min_replicas": 1, "max_replicas": 2, "initial_replicas": 3},
     "autoscaling_config.initial_replicas: 3 is outside min_replicas..max_replicas (1..2)"),
    ({"max_replicas": 2, "downscale_to_zero_delay_s": 5},
     "autoscaling_config.downscale_to_zero_delay_s: applies only with min_replicas 0"),
    ({"max_replicas": 2, "upscale_delay": 5}, "autoscaling_config.upscale_delay: Extra inputs are not permitted"),
    ({"min_replicas": 1}, "autoscaling_config.max_replicas: Field required"),
    ({"max_replicas": 2, "look_back_period_s": 5}, "autoscaling_config.look_back_period_s: Input should be greater than 10"),
])
def test_impossible_ranges_and_typos_name_the_field(config, where):
    with pytest.raises(ValueError) as error:
        parse_serve_args({**BASE, "autoscaling_config": config})
    assert where in str(error.value)


def test_fixed_count_stays_the_default():
    args = parse_serve_args(BASE)
    assert args.num_replicas == 1 and args.replica_range == (1, 1)
    assert deployment_options(args)["num_replicas"] == 1
    assert "autoscaling_config" not in deployment_options(args)


def test_autoscaling_passes_only_what_is_set_and_targets_half_the_admitted_requests():
    args = parse_serve_args({**BASE, "autoscaling_config": {"min_replicas": 0, "max_replicas": 4,
                                                             "downscale_delay_s": 60}})
    assert args.replica_range == (0, 4)
    options = deployment_options(args)
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 4, "downscale_delay_s": 60.0,
                                             "target_ongoing_requests": 16}


def test_given_target_is_kept():
    args = parse_serve_args({**BASE, "autoscaling_config": {"max_replicas": 2, "target_ongoing_requests": 3}})
    assert deployment_options(args)["autoscaling_config"]["target_ongoing_requests"] == 3


def test_a_dumped_autoscaling_args_validates_again():
    """Serve configs and local mode re-validate dumped args: the dump must not read as both at once."""
    args = parse_serve_args({**BASE, "autoscaling_config": {"max_replicas": 2}})
    again = ServeArgs.model_validate(args.model_dump(mode="json"))
    assert again.replica_range == (1, 2) and again.num_replicas is None


def test_serve_accepts_the_options():
    """Our field names are Serve's own (Ray 2.60's AutoscalingConfig forbids none, so compare the names)."""
    config = pytest.importorskip("ray.serve.config")
    args = parse_serve_args({**BASE, "autoscaling_config": {
        "min_replicas": 0, "max_replicas": 3, "initial_replicas": 1, "target_ongoing_requests": 4,
        "upscale_delay_s": 1, "downscale_delay_s": 2, "downscale_to_zero_delay_s": 3, "look_back_period_s": 12,
        "upscaling_factor": 1.5, "downscaling_factor": 0.5, "aggregation_function": "max"}})
    options = deployment_options(args)["autoscaling_config"]
    assert set(options) <= set(config.AutoscalingConfig.model_fields)
    parsed = config.AutoscalingConfig(**options)
    assert (parsed.min_replicas, parsed.max_replicas, parsed.downscale_to_zero_delay_s) == (0, 3, 3)
