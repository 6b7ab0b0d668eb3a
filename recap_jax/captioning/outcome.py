"""The caption command's exit status and closing line.

    0    every sample of this run captioned (or listed as failed, within output.max_failure_share)
    2    a usage error: a config field, path, checkpoint or limit (one line names it)
    3    this run captioned nothing although it had samples, or more than output.max_failure_share
         of them failed (the output folder is still a valid dataset; failures-*.jsonl say why)
    130  interrupted (Ctrl-C); run the same command again to continue
"""

from __future__ import annotations

from typing import Any

import ml_collections

OK, USAGE, FAILED, INTERRUPTED = 0, 2, 3, 130


def exit_status(summary: dict[str, Any], config: ml_collections.ConfigDict) -> int:
    captioned, failed = summary.get("captioned", 0), summary.get("failed", 0)
    if captioned + failed == 0:
        return OK  # nothing left to do: an earlier run finished it
    if captioned == 0 or failed / (captioned + failed) > config.output.max_failure_share:
        return FAILED
    return OK


def closing_line(summary: dict[str, Any], config: ml_collections.ConfigDict) -> str:
    out = config.output.dir
    captioned, failed = summary.get("captioned", 0), summary.get("failed", 0)
    if exit_status(summary, config) == FAILED:
        return (f"[caption] {failed} of {captioned + failed} samples failed (reasons in {out}/failures-*.jsonl"
                f"{', summary.json' if summary.get('finalized') else ''}); exit status {FAILED}")
    if summary.get("finalized") and summary.get("records_total", 1) == 0:
        return f"[caption] output: {out} has no records (see failures-*.jsonl)"
    return (f"[caption] output: {out} (read it with "
            f"tfds.builder_from_directory(...).as_data_source('train'))")
