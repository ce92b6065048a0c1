"""Prometheus metrics from the sampler's status: the service's counters (Redis, all workers together) and
the workers' histograms summed, in the text exposition format (prometheus_client)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from core import protocol


class _Snapshot:
    """A one-off collector over one status report."""

    def __init__(self, report: dict[str, Any]):
        self.report = report

    def collect(self):
        report = self.report
        up = GaugeMetricFamily("digits_up", "1 when the service's Redis answered the last sample, else 0")
        up.add_metric([], 0.0 if report.get("error") else 1.0)
        yield up
        if report.get("error"):
            return
        files = CounterMetricFamily("digits_files", "Inbox files given a result, by status", labels=["status"])
        for status, value in report["counts"].items():
            files.add_metric([status], value)
        yield files
        yield CounterMetricFamily("digits_review_flagged", "Inbox files whose result was flagged for review",
                                  value=report["flagged"])
        yield GaugeMetricFamily("digits_review_pending", "Numbers flagged for review and not yet reviewed",
                                value=report["review_pending"])
        yield CounterMetricFamily("digits_reviewed", "Flagged numbers a person has reviewed", value=report["reviewed"])
        yield GaugeMetricFamily("digits_queue_depth", "Jobs waiting in the digits queue", value=report["queue_depth"])
        yield GaugeMetricFamily("digits_jobs_in_flight", "Jobs a worker holds and has not acknowledged",
                                value=report["in_flight"])
        yield GaugeMetricFamily("digits_files_waiting", "Inbox files queued and not yet done",
                                value=report["files_waiting"])
        answering = [entry for entry in report["workers"] if "error" not in entry]
        yield GaugeMetricFamily("digits_workers_online", "Workers answering digits_info", value=len(answering))
        model = InfoMetricFamily("digits_model", "Each worker's weights version, device and Keras backend",
                                 labels=["worker"])
        for entry in answering:
            model.add_metric([entry["node"]], {"version": str(entry.get("model") or ""),
                                               "device": str(entry.get("device") or ""),
                                               "backend": str(entry.get("backend") or "")})
        yield model
        yield CounterMetricFamily("digits_images", "Images recognised, all workers",
                                  value=sum(int(entry.get("images") or 0) for entry in answering))
        yield CounterMetricFamily("digits_model_calls", "Model calls (batches), all workers",
                                  value=sum(int(entry.get("batches") or 0) for entry in answering))
        yield _histogram("digits_batch_size", "Images per model call, all workers", answering,
                         "batch_size_buckets", protocol.BATCH_SIZE_BUCKETS)
        yield _histogram("digits_drop_to_result_seconds", "Seconds from an inbox file's queueing to its result, "
                         "all workers", answering, "latency_buckets", protocol.LATENCY_BUCKETS,
                         sum_key="latency_seconds_sum")


def _histogram(name: str, documentation: str, workers: list[dict[str, Any]], key: str, bounds: tuple,
               *, sum_key: str | None = None) -> HistogramMetricFamily:
    counts = [0] * (len(bounds) + 1)
    total = 0.0
    for entry in workers:
        for index, value in enumerate((entry.get(key) or [])[:len(counts)]):
            counts[index] += int(value)
        if sum_key:
            total += float(entry.get(sum_key) or 0.0)
        else:  # a batch size's sum is the images
            total += float(entry.get("images") or 0)
    cumulative, buckets = 0, []
    for bound, count in zip([*map(str, bounds), "+Inf"], counts):
        cumulative += count
        buckets.append((bound, cumulative))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=total)


def exposition(report: dict[str, Any]) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(report))
    return generate_latest(registry), CONTENT_TYPE_LATEST
