"""A run directory's ledger and scores -> report.md, report.html, report.json."""
from replicate.report.build import build_report, rebuild_report, write_report

__all__ = ["build_report", "rebuild_report", "write_report"]
