"""Reading a replica's load from vLLM's /metrics (the simulator writes vLLM's names and labels)."""
from __future__ import annotations

import requests

from app.upstream.load import Load, parse_vllm_metrics
from bench.simulator import SimConfig, SimulatorThread


def test_gauges_add_up_over_models_and_engines_and_kv_is_the_fullest():
    text = "\n".join([
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        'vllm:num_requests_running{engine="0",model_name="a"} 3.0',
        'vllm:num_requests_running{engine="1",model_name="a"} 2.0',
        'vllm:num_requests_waiting{engine="0",model_name="odd name, with } brace"} 4.0',
        'vllm:kv_cache_usage_perc{engine="0",model_name="a"} 0.25',
        'vllm:kv_cache_usage_perc{engine="1",model_name="a"} 0.75',
        "vllm:num_requests_waiting garbage",
        "process_cpu_seconds_total 12.5",
    ])
    assert parse_vllm_metrics(text) == Load(running=5.0, waiting=4.0, kv_cache_usage=0.75)


def test_older_vllm_kv_gauge_name_and_a_page_without_vllm_gauges():
    assert parse_vllm_metrics("vllm:gpu_cache_usage_perc 0.5\n") == Load(0.0, 0.0, 0.5)
    assert parse_vllm_metrics("# nothing here\nprocess_cpu_seconds_total 1\n") is None


def test_simulator_metrics_under_load():
    with SimulatorThread(SimConfig(port=0, max_num_seqs=1, itl=5)) as sim:
        # Two slow streams for one slot: one generates, one waits, and the KV cache is "full".
        replies = [requests.post(sim.url + "/v1/completions", json={"prompt": "x", "stream": True},
                                 stream=True, timeout=10) for _ in range(2)]
        try:
            assert sim.wait_for(lambda s: s.running == 1 and s.waiting == 1)
            load = parse_vllm_metrics(requests.get(sim.url + "/metrics", timeout=5).text)
        finally:
            for reply in replies:
                reply.close()
    assert load == Load(running=1.0, waiting=1.0, kv_cache_usage=1.0)
