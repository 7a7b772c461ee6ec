"""Fleet reports: text summary, self-contained HTML with plots, PNG files."""

from controller.reports.render import Report, render_report

__all__ = ["Report", "render_report"]
