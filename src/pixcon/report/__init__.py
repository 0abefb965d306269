"""``pixcon report``: one self-contained HTML page from demo or training run directories."""

from pixcon.report.build import ReportOptions, build_report

__all__ = ["ReportOptions", "build_report"]
